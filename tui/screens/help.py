"""The help screen: keys, and what the filters do."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]podtrace[/b]: where packets die on this node

[b]1[/b] Drops       reason, kernel location, netns/interface, flow, count, rate over the last 10 s
[b]2[/b] Services    client -> Service -> backend flows and their drops; [b]s[/b] sorts (packets, drops,
                    time in netfilter, name)
[b]3[/b] Overlay     tunnels, fragments, frag-needed, MTU verdicts
[b]4[/b] Softirq     per-CPU NET_RX/NET_TX times, squeezes
[b]5[/b] Probes      attached programs, events and losses per probe, the attach ladder
[b]6[/b] Node        node-wide facts
[b]7[/b] Journeys    replaying a merged recording (podtrace merge A B ... -o ALL): each flow across
                    the nodes, client's node -> where it died, one-way latency per segment

[b]Enter[/b]  on a drop or a Service flow: its recent packets hop by hop (device, hook, NAT
       before -> after, drop, time and delta); Enter on a hop: that connection's packets only
       (before and after NAT, and its replies); on a journey: its hops node by node, on the
       first node's clock, and each segment's one-way latency; Esc goes back
[b]/[/b]      view filter in tcpdump syntax, e.g. [i]udp port 53[/i] or [i]host 10.96.0.10[/i]:
       applied to events already captured, without reattaching probes; it narrows the
       kernel filter given on the command line, it cannot widen it. Empty clears it.
[b]w[/b]      time window of the drops' counts and the Softirq figures: since start, last 10 s,
       last 60 s (the header names it; the Services view counts since the start)
[b]p[/b]      pause/resume the display (capture and counting go on)
[b]r[/b]      start/stop recording to SAVE_DIR/podtrace-YYYYmmdd-HHMMSS.ptrec (--save-dir)
[b]x[/b]      save a screenshot (SVG) to SAVE_DIR/podtrace-YYYYmmdd-HHMMSS.svg
[b]?[/b]      this help        [b]q[/b]  quit

Lost events (ring buffer full) show in red in the header: narrow the filter.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("question_mark", "dismiss", "Close"),
                Binding("q", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 96; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text.from_markup(HELP))
