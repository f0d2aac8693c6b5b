"""podtrace's own ring-buffer reader (tracer/sources/ringbuf.py) against the kernel's ring buffer, and against BCC's.

A one-page ring holds about 13 drop events, so a few hundred drops wrap it many times: a record split across the
end of the data area, a header read at the wrong place or a consumer position handed back wrongly would show as
a malformed or missing event. Every drop must be either read whole or counted as lost by the kernel.
"""

from __future__ import annotations

import threading

import pytest
from support.netns import netns_pair, send_udp

from tracer.events.decode import CT_SIZE, EVENT_CT, EVENT_DROP, decode, decode_ct
from tracer.node.names import netns_inode
from tracer.probes.build import ProbeConfig
from tracer.probes.pcapfilter import compile_filter
from tracer.sources.live import LiveSource

pytestmark = pytest.mark.root

SENT = 1009  # a prime: no round number can match by accident
PORT = 5099


def _trace(monkeypatch: pytest.MonkeyPatch, bcc_reader: bool) -> tuple[list[bytes], dict[str, int], bool]:
    if bcc_reader:
        monkeypatch.setenv("PODTRACE_BCC_RINGBUF", "1")
    else:
        monkeypatch.delenv("PODTRACE_BCC_RINGBUF", raising=False)
    with netns_pair() as pair:
        source = LiveSource(ProbeConfig(filter=compile_filter(f"udp port {PORT}"), netns_inode=netns_inode(pair.b),
                                        ringbuf_pages=1))
        source.start(progress=False)
        ours = source._ring is not None
        read: list[bytes] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                read.extend(source.poll_raw(5))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for _ in range(SENT // 20):
                send_udp(pair.a, pair.addr_b, PORT, 20)
            send_udp(pair.a, pair.addr_b, PORT, SENT % 20)
        finally:
            stop.set()
            thread.join()
            read.extend(source.poll_raw(0))
            source.close()
    return read, source.final_counters, ours


@pytest.mark.parametrize("bcc_reader", [False, True], ids=["podtrace reader", "bcc reader"])
def test_every_drop_is_read_whole_or_counted_lost(monkeypatch: pytest.MonkeyPatch, bcc_reader: bool) -> None:
    read, counters, ours = _trace(monkeypatch, bcc_reader)
    assert ours is not bcc_reader
    # Each drop may be preceded by its conntrack event (type 6): a companion record, not counted as a drop or lost.
    companions = [decode_ct(raw) for raw in read if raw[0] == EVENT_CT]
    assert all(len(raw) == CT_SIZE for raw in read if raw[0] == EVENT_CT)
    events = [decode(raw) for raw in read if raw[0] != EVENT_CT]
    assert len(companions) <= len(events) + counters["lost"]
    drops = [e for e in events if e.type == EVENT_DROP and e.outer.dport == PORT]
    assert len(drops) == len(events), "every record read is one of the test's drops, decoded whole"
    assert all(e.outer.proto == 17 and e.len == 40 for e in drops)  # 20 IP + 8 UDP + 32 payload
    assert len(drops) + counters["lost"] == SENT, counters
    assert len(drops) > 13, "the ring wrapped at least once while it was read"
