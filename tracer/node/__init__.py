"""What the node says about itself: kube-proxy's rules, conntrack, IPVS, links, names, pods; read at the start or the
end of a session."""
