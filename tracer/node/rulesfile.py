"""A saved kube-proxy ruleset, as attached to a ticket: `iptables-save` / `ip6tables-save`, `iptables -S`, or
`nft -j list ruleset`. Which one it is comes from the text itself; anything else is refused with one line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.node.kubeproxy.model import ServiceMap
from tracer.node.kubeproxy.nftables import parse_nft_json
from tracer.output.errors import UsageError

IPTABLES_SAVE, IPTABLES_S, NFT_JSON = "iptables-save", "iptables -S", "nft -j"

# A line of `iptables -S`: a policy, a chain or a rule.
_DASH_S = re.compile(r"^-(?:P \S+ \S+|N \S+|A \S+( .*)?)$")
_SAVE = re.compile(r"^(?:\*\w+|:\S+ \S+ \[\d+:\d+\]|COMMIT|#.*)$")


@dataclass
class SavedRules:
    kind: str  # IPTABLES_SAVE, IPTABLES_S or NFT_JSON
    text: str
    nft: dict[str, Any] | None = None

    def services(self) -> ServiceMap:
        """The Services the same reader as the tracer finds in it."""
        if self.nft is not None:
            return parse_nft_json(self.nft)
        return parse_iptables_save(self.text)


def detect(text: str, where: str = "the file") -> SavedRules:
    """Which dump `text` is. Raises UsageError when it is none of them (or is empty)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError as err:
            raise UsageError(f"{where} looks like JSON but does not parse: {err}",
                             "save it with: nft -j list ruleset > FILE") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
            raise UsageError(f"{where} is JSON but not `nft -j list ruleset` output (no \"nftables\" list)",
                             "save it with: nft -j list ruleset > FILE")
        return SavedRules(NFT_JSON, text, doc)
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if lines and any(line.startswith("*") for line in lines) and \
            all(_SAVE.match(line) or _DASH_S.match(line) for line in lines):
        return SavedRules(IPTABLES_SAVE, text)
    if lines and all(_DASH_S.match(line) or line.startswith("#") for line in lines):
        return SavedRules(IPTABLES_S, text)
    first = next((line for line in lines if not _SAVE.match(line) and not _DASH_S.match(line)), "")
    hint = ("that is nft's text form: save it with nft -j list ruleset > FILE" if first.startswith("table ")
            else "save one with: iptables-save > FILE, iptables -S > FILE, or nft -j list ruleset > FILE")
    what = "is empty" if not lines else f"is not iptables-save, iptables -S or nft -j output (line {first[:40]!r})"
    raise UsageError(f"{where} {what}", hint)


def read(path: str) -> SavedRules:
    """The ruleset saved in `path`. Raises UsageError when it cannot be read or is not a ruleset."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from err
    return detect(text, path)
