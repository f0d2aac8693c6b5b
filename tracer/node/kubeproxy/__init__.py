"""kube-proxy's rules read back from a node: Service VIP:port/proto -> Service name -> endpoints, and which rule a
dropped packet hit. Three proxy modes, three sources, one `ServiceMap`. Import each name from the module that owns it:

- `model`: ServiceMap, ServicePort, Endpoint, Rule, Criteria, DropMatch, merge (the lookups, pure)
- `names`: service port names from kube-proxy's rule comments and nftables chain names
- `iptables`: iptables mode, `iptables-save` / `iptables -S` text
- `nftables`: nftables mode, `nft -j list ruleset` (rule text rendered by `nft_text`)
- `ipvsadm`: IPVS mode, `ipvsadm -Ln` text
- `collect`: runs those commands on the node (or in a netns): the only module here that does I/O

Parsing is pure (text or JSON in, `ServiceMap` out). Nothing is re-exported here, so importing a parser never
imports the command runner.
"""
