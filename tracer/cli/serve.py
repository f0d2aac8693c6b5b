"""`podtrace serve`: the node agent (tracer/serve/): Prometheus metrics and the flight recorder."""

from __future__ import annotations

import argparse

from tracer.serve.options import DEFAULT_PORT

EPILOG = f"""\
Metrics (docs/metrics.md lists each one): drops by node, kernel reason, severity, cause, Service and backend;
Service flow packets and drops; conntrack fill and insert failures; softirq NET_RX/NET_TX wait p99 and softnet
backlog drops per CPU; MTU verdicts per pod path and link MTUs; events, lost and sampled per probe; each probe's
attach state. At most --max-services Services and --max-backends backends get their own series (the busiest,
re-ranked every --rules-refresh); the rest are counted under service="other" / backend="other".

Flight recorder (--recorder-dir): per-packet events (drops, and path events for --path FILTER) go to a ring of
recording segments under DIR/segments (--ring-size, --ring-seconds, rotated every --segment-seconds). When a
--trigger fires, the window from --before seconds before it to --after seconds after is sealed into
DIR/incidents/incident-*.ptrec.gz, which `podtrace report`, `podtrace tui --replay` and tracer.api open.
Triggers (repeatable; also "triggers" in --config):
  drop [reason=NAME] [severity=loss|policy|benign] [service=NS/NAME[:PORT]] [filter='PCAP EXPRESSION']
  drop-rate per_second=N [the drop keys]
  conntrack-fill ratio=R

--config FILE: a JSON object with the long flag names as keys, e.g.
  {{"listen": "0.0.0.0:{DEFAULT_PORT}", "recorder_dir": "/var/lib/podtrace", "triggers": ["drop severity=loss"]}}
Flags given on the command line win over the file. SIGTERM or SIGINT stops serve cleanly (an open incident is
sealed with what it has); after a SIGKILL the kernel drops every probe with the process, and the segments on disk
stay readable up to their last second.

exit codes: 0 stopped by a signal or --duration, 1 error, 2 bad flags or config

examples:
  sudo podtrace serve
  sudo podtrace serve --listen 0.0.0.0:{DEFAULT_PORT} --recorder-dir /var/lib/podtrace \\
      --trigger 'drop service=default/web' --trigger 'conntrack-fill ratio=0.9'
  sudo podtrace serve --node pt-node2 --listen 127.0.0.1:9561 --path 'tcp port 8080'   # a lab node
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run as a node agent: Prometheus metrics and a trigger-on-drop flight recorder",
        description="Keep the cheap probes attached and export what they see as Prometheus metrics; optionally "
                    "keep the last minutes of events on disk and seal them into a recording when a trigger fires.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="JSON settings file (flags win)")
    parser.add_argument("--node", metavar="NETNS", help="the node's `ip netns` name (default: serve's own "
                        "namespace, which is the node when serve runs with hostNetwork)")
    parser.add_argument("--node-name", metavar="NAME", help="the node label (default: $NODE_NAME, --node, or the "
                        "hostname)")
    parser.add_argument("--listen", metavar="ADDR:PORT", help=f"metrics address (default 127.0.0.1:{DEFAULT_PORT})")
    parser.add_argument("--interval", metavar="S", help="read the node and attribute drops every S seconds (2)")
    parser.add_argument("--rules-refresh", metavar="S", help="re-read kube-proxy's rules every S seconds (30)")
    parser.add_argument("--mtu-refresh", metavar="S", help="re-read link MTUs every S seconds (30)")
    parser.add_argument("--max-services", metavar="N", help="Services with their own series (50)")
    parser.add_argument("--max-backends", metavar="N", help="backends with their own series (200)")
    parser.add_argument("--path", metavar="FILTER", help="also record path events of packets matching this pcap "
                        "filter (the packets before a drop in an incident)")
    parser.add_argument("--recorder-dir", metavar="DIR", help="turn the flight recorder on, keeping its files here")
    parser.add_argument("--ring-size", metavar="SIZE", help="segments kept at most (256M)")
    parser.add_argument("--ring-seconds", metavar="S", help="segments older than this are removed (600)")
    parser.add_argument("--segment-seconds", metavar="S", help="start a new segment every S seconds (60)")
    parser.add_argument("--before", metavar="S", help="seconds of events kept before a trigger (120)")
    parser.add_argument("--after", metavar="S", help="seconds of events kept after a trigger (30)")
    parser.add_argument("--incidents-size", metavar="SIZE", help="sealed incidents kept at most, oldest go (1G)")
    parser.add_argument("--cooldown", metavar="S", help="no new incident this long after one is sealed (60)")
    parser.add_argument("--trigger", action="append", metavar="SPEC", help="seal an incident when SPEC fires")
    parser.add_argument("--duration", metavar="S", help="stop after S seconds (default: until SIGTERM/SIGINT)")
    parser.add_argument("--btf", metavar="FILE", help="BTF to read instead of /sys/kernel/btf/vmlinux")
    parser.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--ringbuf-pages", type=int, default=256, metavar="N",
                        help="ring buffer size in 4 KiB pages, a power of two (default %(default)s); raise it when "
                             "podtrace_probe_events_lost_total grows")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.kernel import bccenv
    from tracer.output.errors import UsageError
    from tracer.serve.agent import Agent
    from tracer.serve.options import from_args
    from tracer.sources.session import StopFlag

    options = from_args(args)
    bccenv.require_root("serve")
    stop = StopFlag()
    agent = Agent(options, lambda: stop.stopped)
    try:
        try:
            agent.start()
        except OSError as err:  # the metrics port
            raise UsageError(f"cannot listen on {options.address}:{options.port}: {err.strerror or err}") from err
        agent.run()
    finally:
        agent.close()
    agent.log("stopped")
    return 0
