"""nft JSON rule expressions written back in nft's own syntax, for showing a rule to a human."""

from __future__ import annotations

import json
from typing import Any


def nft_text(exprs: list[Any]) -> str:
    """nft's own syntax for the expressions kube-proxy uses; anything else as compact JSON."""
    return " ".join(_nft_expr_text(e) for e in exprs)


def _nft_operand(x: Any) -> str:
    if isinstance(x, dict):
        if "payload" in x:
            p = x["payload"]
            return f"{p.get('protocol', 'th')} {p.get('field', '')}".strip()
        if "meta" in x:
            return f"meta {x['meta'].get('key', '')}"
        if "ct" in x:
            return f"ct {x['ct'].get('key', '')}"
        if "concat" in x:
            return " . ".join(_nft_operand(c) for c in x["concat"])
        if "prefix" in x:
            return f"{x['prefix']['addr']}/{x['prefix']['len']}"
        if "range" in x:
            return f"{x['range'][0]}-{x['range'][1]}"
        if "set" in x:
            return "{ " + ", ".join(_nft_operand(v) for v in x["set"]) + " }"
        if "numgen" in x:
            n = x["numgen"]
            return f"numgen {n.get('mode', 'random')} mod {n.get('mod', 0)}"
        if "&" in x or "|" in x or "^" in x:
            op = next(iter(x))
            a, b = x[op]
            return f"{_nft_operand(a)} {op} {_nft_operand(b)}"
        if "elem" in x:
            return _nft_operand(x["elem"].get("val"))
        return json.dumps(x, separators=(",", ":"))
    if isinstance(x, list):
        if len(x) == 2:
            return f"{_nft_operand(x[0])} : {_nft_expr_text(x[1])}"
        return "{ " + ", ".join(_nft_operand(v) for v in x) + " }"
    return str(x)


def _nft_expr_text(e: Any) -> str:
    if not isinstance(e, dict):
        return str(e)
    kind, body = next(iter(e.items()))
    if kind == "match":
        op = body.get("op", "==")
        sep = " " if op in ("==", "in") else f" {op} "
        return f"{_nft_operand(body.get('left'))}{sep}{_nft_operand(body.get('right'))}"
    if kind in ("accept", "drop", "return", "continue"):
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body.get('target', '')}"
    if kind == "reject":
        return "reject" if not body else f"reject with {body.get('type', '')} {body.get('expr', '')}".rstrip()
    if kind in ("dnat", "snat"):
        port = f":{body['port']}" if body.get("port") is not None else ""
        return f"{kind} to {body.get('addr', '')}{port}"
    if kind == "masquerade":
        flags = body.get("flags") if isinstance(body, dict) else None
        return "masquerade" + (f" {flags if isinstance(flags, str) else ','.join(flags)}" if flags else "")
    if kind == "vmap":
        return f"{_nft_operand(body.get('key'))} vmap {_nft_operand(body.get('data'))}"
    if kind == "mangle":
        return f"{_nft_operand(body.get('key'))} set {_nft_operand(body.get('value'))}"
    if kind == "counter":
        return f"counter packets {body.get('packets', 0)} bytes {body.get('bytes', 0)}" if body else "counter"
    if kind == "xt":
        return f"xt {body.get('type', '')} {body.get('name', '')}".strip()
    return json.dumps(e, separators=(",", ":"))

