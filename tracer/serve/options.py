"""`podtrace serve` settings from flags and an optional JSON config file (flags win), checked before any probe is
compiled: every mistake is one line naming the setting.

Config file keys are the long flag names with dashes or underscores, e.g.

    {"listen": "0.0.0.0:9560", "recorder_dir": "/var/lib/podtrace", "ring_size": "256M", "before": 120,
     "after": 30, "triggers": ["drop service=default/web", "conntrack-fill ratio=0.9"]}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from tracer.output.errors import UsageError
from tracer.recording.recorder import parse_size
from tracer.serve.recorder import Retention
from tracer.serve.triggers import Trigger, parse_trigger

DEFAULT_PORT = 9560


@dataclass
class ServeOptions:
    node: str | None = None  # `ip netns` name of the node (None: serve's own namespace, the node on a worker)
    node_name: str = ""
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    interval: float = 2.0
    rules_refresh: float = 30.0
    mtu_refresh: float = 30.0
    max_services: int = 50
    max_backends: int = 200
    path_filter: str = ""
    recorder_dir: str | None = None
    retention: Retention = field(default_factory=Retention)
    triggers: list[Trigger] = field(default_factory=list)
    btf: str | None = None
    ready_file: str | None = None
    ringbuf_pages: int = 256
    duration: float | None = None


# flag dest -> (config key, kind)
_KEYS: dict[str, str] = {
    "node": "str", "node_name": "str", "listen": "str", "interval": "seconds", "rules_refresh": "seconds",
    "mtu_refresh": "seconds", "max_services": "count", "max_backends": "count", "path": "str",
    "recorder_dir": "str", "ring_size": "size", "ring_seconds": "seconds", "segment_seconds": "seconds",
    "before": "seconds", "after": "seconds", "incidents_size": "size", "cooldown": "seconds", "triggers": "list",
    "duration": "seconds",
}
_RETENTION = {"ring_size": "ring_bytes", "ring_seconds": "ring_s", "segment_seconds": "segment_s",
              "before": "before_s", "after": "after_s", "incidents_size": "incident_bytes", "cooldown": "cooldown_s"}


def _seconds(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise UsageError(f"{key}: {value!r} is not a positive number of seconds")
    return number


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1:
        raise UsageError(f"{key}: {value!r} is not a positive whole number")
    return int(value)


def _size(key: str, value: Any) -> int:
    try:
        return parse_size(str(value)) if not isinstance(value, int) or value <= 0 else value
    except ValueError as err:
        raise UsageError(f"{key}: {err}") from None


def read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as err:
        raise UsageError(f"--config {path}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"--config {path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a JSON object of settings")
    settings: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == "trigger":
            key = "triggers"
        if key not in _KEYS:
            raise UsageError(f"--config {path}: unknown setting {raw_key!r} (known: {', '.join(sorted(_KEYS))})")
        if _KEYS[key] == "list":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise UsageError(f"--config {path}: {raw_key} must be a list of trigger lines")
        elif _KEYS[key] == "str" and not isinstance(value, str):
            raise UsageError(f"--config {path}: {raw_key} must be a string")
        settings[key] = value
    return settings


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"--listen {text!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise UsageError(f"--listen {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def from_args(args: argparse.Namespace) -> ServeOptions:
    settings = read_config(args.config) if args.config else {}
    for dest in _KEYS:  # flags given on the command line win over the file
        value = getattr(args, dest, None)
        if dest == "triggers":
            value = args.trigger or None
        if value is not None:
            settings[dest] = value
    options = ServeOptions(btf=args.btf, ready_file=args.ready_file, ringbuf_pages=args.ringbuf_pages)
    if "listen" in settings:
        options.address, options.port = parse_listen(str(settings["listen"]))
    for key in ("interval", "rules_refresh", "mtu_refresh", "duration"):
        if key in settings:
            setattr(options, key, _seconds(key.replace("_", "-"), settings[key]))
    for key in ("max_services", "max_backends"):
        if key in settings:
            setattr(options, key, _count(key.replace("_", "-"), settings[key]))
    options.node = settings.get("node") or None
    if options.node and not os.path.exists(os.path.join("/run/netns", options.node)):
        raise UsageError(f"--node {options.node!r}: no such network namespace", "see `ip netns list`")
    options.node_name = settings.get("node_name") or os.environ.get("NODE_NAME") or options.node or \
        socket.gethostname()
    options.path_filter = str(settings.get("path") or "")
    retention: dict[str, Any] = {}
    for key, attribute in _RETENTION.items():
        if key in settings:
            kind = _KEYS[key]
            retention[attribute] = _size(key, settings[key]) if kind == "size" else _seconds(key, settings[key])
    options.retention = Retention(**retention)
    if options.retention.before_s > options.retention.ring_s:
        raise UsageError(f"--before {options.retention.before_s:g} is longer than --ring-seconds "
                         f"{options.retention.ring_s:g}: the ring would not hold the window")
    options.recorder_dir = settings.get("recorder_dir") or None
    options.triggers = [parse_trigger(line) for line in settings.get("triggers") or []]
    if options.triggers and not options.recorder_dir:
        raise UsageError("--trigger needs --recorder-dir: triggers seal flight-recorder incidents")
    if options.recorder_dir:
        parent = os.path.abspath(options.recorder_dir)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UsageError(f"--recorder-dir {options.recorder_dir}: {parent} is not a writable directory")
    if options.path_filter:
        from tracer.probes.pcapfilter import compile_filter

        compile_filter(options.path_filter)  # a bad expression fails here, one line
    return options


def retention_fields() -> list[str]:
    return [f.name for f in fields(Retention)]
