"""flannel's subnet.env (/run/flannel/subnet.env): FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ."""

from __future__ import annotations

SUBNET_ENV = "/run/flannel/subnet.env"  # where flannel writes it on every node


def parse_subnet_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines of flannel's subnet.env (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip('"')
    return values
