"""The rule comments of tests/unit/fixtures/kubeproxy/quoted-comments.restore as iptables-restore stored them (the
text a user wrote), in the order iptables-save lists their rules: INPUT, then KUBE-SERVICES."""

WRITTEN = ["kubernetes service portals", "block someone else's scanner",
           'ops said "temporary", see C:\\runbook\\dns', 'it\'s "both" \\ all three', "blocked_by-ops",
           "default/empty:http has no endpoints"]
