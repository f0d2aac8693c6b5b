"""Decoded events: the Python mirror of bpf/podtrace.h."""
