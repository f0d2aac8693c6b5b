"""`podtrace export`: a recording as pcapng for Wireshark and tshark, with per-packet comments."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tracer.analysis.identity import ConnIdentities
from tracer.cli.readback import incomplete_error, warn_truncated
from tracer.events.decode import EVENT_SIZE, decode
from tracer.output.errors import PodtraceError, RecordingError
from tracer.recording.fileformat import create_new
from tracer.sources.replay import ReplaySource

EXPORT_EPILOG = """\
One frame per packet: its bytes as first seen, and a comment with every hop it was seen at (netns/interface,
point, time from the first), the NAT between them, and its drop with the reason, location and Service (from the
drop's conntrack entry when recorded). --per-hop writes a frame per hop instead, each hop point its own interface
("pt-node1/eth0 rx"): Wireshark 4.0 still marks a TCP segment's later hops as retransmissions (4.2+ can keep
conversations apart by interface). The bytes start at the IP header (link type RAW).

examples:
  podtrace export node1.ptrec.gz --pcapng node1.pcapng
  tshark -r node1.pcapng -T fields -e frame.comment -e ip.src -e ip.dst
  podtrace export node1.ptrec.gz --per-hop --pcapng node1-hops.pcapng
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="convert a recording to pcapng with per-packet comments",
        description="Write the recorded packets to a pcapng file that Wireshark and tshark open.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("file", metavar="FILE")
    export.add_argument("--pcapng", required=True, metavar="OUT", help="pcapng file to write")
    export.add_argument("--no-follow", action="store_true", help="read FILE only, not its rotation parts")
    export.add_argument("--per-hop", action="store_true",
                        help="a frame per hop (each hop point its own interface) instead of one per packet")
    export.set_defaults(func=run_export)


def _final_cause_states(path: str, follow: bool) -> Any:
    """ReplaySource.cause_states() once the whole recording is read, reading no event (damage and missing parts
    are reported by the pass that exports the packets)."""
    with ReplaySource(path, follow=follow, events=False) as ahead:
        try:
            for _ in ahead:
                pass
        except RecordingError:
            pass  # what was read before the damage still holds
        return ahead.cause_states()


def run_export(args: argparse.Namespace) -> int:
    from tracer.events.decode import EVENT_NAT, decode_nat
    from tracer.recording.pcapng import PcapngWriter
    from tracer.recording.pcapng_packets import DropCauses, Packet, PacketFolder, packet_comment

    source = ReplaySource(args.file, follow=not args.no_follow)
    header = source.header
    # what report would say: the header's rules, and the trailer's conntrack tables and node state, which come after
    # the packets in the file (a first pass reads them, without the events)
    causes = DropCauses(source.resolver(), _final_cause_states(args.file, not args.no_follow))
    error: PodtraceError | None = None
    identities = ConnIdentities()  # each drop's conntrack entry: the Service it dialled
    try:
        with create_new(args.pcapng) as out:
            writer = PcapngWriter(out, f"Linux {header.get('kernel_release', '')}", header.get("hostname", ""))

            def emit(packet: Packet) -> None:
                writer.folded(packet, source.names, packet_comment(packet, source.names, identities.for_drop, causes))

            folder = PacketFolder(emit)
            try:
                for raw in source:
                    identities.add_raw(raw)
                    if len(raw) < EVENT_SIZE:  # NAT (and other) events carry no packet bytes
                        if raw[0] == EVENT_NAT and not args.per_hop:
                            folder.add_nat(decode_nat(raw))
                    elif args.per_hop:
                        writer.event(decode(raw), source.names, per_hop=True)
                    else:
                        folder.add(decode(raw))
            except RecordingError as err:
                error = err  # the packets before the damage are in the file
            folder.flush()
    except OSError as err:
        raise RecordingError(f"cannot write {args.pcapng}: {err.strerror or err}") from err
    finally:
        source.close()
    warn_truncated(source)
    sys.stderr.write(f"wrote {writer.packets} packets on {writer.interfaces} interfaces to {args.pcapng}\n")
    if error is not None:
        raise error
    if (incomplete := incomplete_error(source)) is not None:
        raise incomplete
    return 0
