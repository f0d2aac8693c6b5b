"""`podtrace serve`: a long-running node agent with Prometheus metrics and a trigger-on-drop flight recorder.

    agent.py       the loop: probes attached once, a poll every tick, the node read every refresh
    attribution.py drops of one refresh charged to Service, backend and cause as `podtrace flows` charges them
    labels.py      bounded label values (top-N Services plus "other")
    metrics.py     the metric state (pure) and its prometheus_client collector
    triggers.py    what seals an incident: a matching drop, a drop rate, a conntrack fill
    recorder.py    the on-disk ring of recording segments and the sealed incident recordings
    options.py     flags and the config file, checked before any probe is compiled
    deploy/        Dockerfile, Kubernetes manifests and the Grafana dashboard (package data)
"""
