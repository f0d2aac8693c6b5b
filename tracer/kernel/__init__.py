"""What the running kernel is and lets podtrace do: BTF, capabilities tried for real, headers, the attach ladder,
kallsyms."""
