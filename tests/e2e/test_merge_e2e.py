"""`podtrace merge` on two real recordings made at once, one per "node" (a throwaway namespace each), and its
refusal of recordings that share no packet. The client namespace is laid out as a pod (cgroup and kubelet
directory), so the recording of its node names the sender. Recorded on this one machine (one boot id), the
recordings share its clock: merge says "same machine clock" and estimates nothing.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import podtrace
from support.netns import netns_pair, sh, tcp_connect_attempts

from tracer.benchmarks.netns import Pair
from tracer.lab import kubelet_layout

pytestmark = pytest.mark.root

PORT = 5999
ATTEMPTS = 3  # connection attempts, each a SYN (and its retransmits) dropped on the second node


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as made:
        yield made


@pytest.fixture
def client_pod(pair: Pair, tmp_path: Path) -> Iterator[str]:
    """pair.a laid out as pod default/client on its node; yields the kubelet root."""
    subtree, uid = f"podtrace-test-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    root = str(tmp_path / "kubelet")
    kubelet_layout.add_pod("default", "client", uid, root=root, subtree=subtree)
    pause = subprocess.Popen(["ip", "netns", "exec", pair.a, "sleep", "infinity"])
    try:
        kubelet_layout.move_into(uid, pause.pid, subtree)
        yield root
    finally:
        pause.kill()
        pause.wait()
        assert not kubelet_layout.remove_all(root=None, subtree=subtree)


def _record_both(pair: Pair, root: str, out: Path, traffic: bool = True) -> tuple[Path, Path]:
    a, b = out / "node-a.ptrec.gz", out / "node-b.ptrec.gz"
    recorders = [podtrace.start("record", "-o", str(path), "--netns", netns, "--kubelet-root", root,
                                f"tcp port {PORT}") for path, netns in ((a, pair.a), (b, pair.b))]
    try:
        if traffic:
            tcp_connect_attempts(pair.a, pair.addr_b, PORT, ATTEMPTS)
    finally:
        results = [recorder.stop() for recorder in recorders]
    for result in results:
        assert result.returncode == 0, result.stderr
    return a, b


def test_two_nodes_recordings_merge_into_the_journey_of_the_dropped_connections(pair: Pair, client_pod: str,
                                                                                tmp_path: Path) -> None:
    sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP", netns=pair.b)
    a, b = _record_both(pair, client_pod, tmp_path)
    merged = podtrace.run("merge", "--json", str(a), str(b))
    assert merged.returncode == 0, merged.stderr
    lines = [json.loads(line) for line in merged.stdout.splitlines()]
    journeys = [line for line in lines if line.get("journey")]
    summary = lines[-1]
    assert summary["summary"] and summary["clock"].startswith("same machine clock"), summary
    assert summary["offset_ns"] == _wall_offset(a) - _wall_offset(b)  # b's monotonic timestamps kept exactly
    # one flow per connection attempt (its own source port), each SYN seen leaving node a and dying in node b
    assert len(journeys) == ATTEMPTS, journeys
    for journey in journeys:
        assert journey["flow"].startswith(f"tcp {pair.addr_a}:") and journey["flow"].endswith(f"> {pair.addr_b}:{PORT}")
        nodes = [hop["node"].split("/", 1)[1] for hop in journey["path"]]
        assert nodes[0] == pair.a and nodes[-1] == pair.b, journey["path"]
        assert journey["path"][-1]["at"].startswith(f"dropped in {pair.b}/"), journey["path"]
        assert journey["died"]["reason"] == "NETFILTER_DROP" and journey["died"]["netns"] == pair.b, journey
        assert journey["one_way_us"] is not None and journey["one_way"] == "same clock"
    _merged_report_shows_the_journeys(a, b, tmp_path / "both.ptrec.gz", client=pair.addr_a, backend=pair.addr_b,
                                      port=PORT, dropped_in=pair.b, client_pod="default/client", journeys=ATTEMPTS)


def _wall_offset(path: Path) -> int:
    from tracer.sources.replay import ReplaySource

    source = ReplaySource(str(path))
    source.close()
    assert source.header["boot_id"], source.header  # the recorder says which boot
    return int(source.header["clock"]["wall_offset_ns"])


def _report_json(path: Path) -> list[dict]:
    report = podtrace.run("report", "--json", str(path))
    assert report.returncode == 0, report.stderr
    return [json.loads(line) for line in report.stdout.splitlines()]


def _drops(rows: list[dict], netns: str, dst: str, port: int) -> int:
    return sum(row["count"] for row in rows if row.get("reason") == "NETFILTER_DROP" and row.get("netns") == netns
               and row.get("dst") == dst and row.get("dport") == port)


def _merged_report_shows_the_journeys(a: Path, b: Path, both: Path, *, client: str, backend: str, port: int,
                                      dropped_in: str, client_pod: str | None, journeys: int | None) -> None:
    """merge -o writes one recording whose report names the journeys of the SYNs the INPUT/FORWARD DROP rule in
    `dropped_in` ate: the same drops as that node's own recording, each journey ending there."""
    written = podtrace.run("merge", str(a), str(b), "-o", str(both))
    assert written.returncode == 0, written.stderr
    assert both.exists() and not [p for p in both.parent.iterdir() if ".tmp-" in p.name]
    assert podtrace.run("merge", str(a), str(b), "-o", str(both)).returncode == 2  # never over an existing file

    own = _report_json(b)
    lines = _report_json(both)
    # the drops of node b's own recording, and as many: the merged file holds both nodes' events
    assert _drops(lines, dropped_in, backend, port) == _drops(own, dropped_in, backend, port) >= (journeys or 1)
    assert lines[-1]["events"] == _report_json(a)[-1]["events"] + own[-1]["events"]
    merged = next(line for line in lines if line.get("merged"))
    # one machine, one boot: its clock, nothing estimated (and no alignment from the packets)
    assert not merged["clock"]["estimate"] and merged["clock"]["same_clock"]
    assert merged["clock"]["text"].startswith("same machine clock") and merged["clock"]["pairs"] == 0
    assert all(link["same_clock"] for link in merged["clock"]["links"])
    died = [line for line in lines if line.get("journey") and line["died"]]
    to_backend = [j for j in died if j["src"] == client and j["dst"] == backend and j["flow"].endswith(f":{port}")]
    if journeys is not None:
        assert len(to_backend) == journeys, died
    assert to_backend, lines
    for journey in to_backend:
        assert journey["died"]["reason"] == "NETFILTER_DROP" and journey["died"]["node"].endswith(f"/{dropped_in}")
        assert journey["path"][-1]["at"].startswith(f"dropped in {dropped_in}/"), journey["path"]
        if client_pod:
            assert journey["client_pod"] == client_pod

    text = podtrace.run("report", str(both))
    assert text.returncode == 0, text.stderr
    assert "cross-node journeys: merged recording of" in text.stdout and "same machine clock" in text.stdout
    assert "an estimate" not in text.stdout
    assert f"died at {to_backend[0]['died']['node']} ({dropped_in}):" in text.stdout, text.stdout
    if client_pod:
        assert f"client {client_pod} ({client}) on " in text.stdout, text.stdout

    pcap = both.parent / "both.pcapng"
    exported = podtrace.run("export", str(both), "--pcapng", str(pcap))
    assert exported.returncode == 0 and pcap.stat().st_size > 0, exported.stderr


def test_recordings_of_unrelated_runs_are_refused(client_pod: str, tmp_path: Path) -> None:
    recordings = []
    for run in ("first", "second"):  # two runs, each in namespaces of its own: no packet in common
        with netns_pair() as other:
            sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP", netns=other.b)
            (tmp_path / run).mkdir()
            recordings.append(_record_both(other, client_pod, tmp_path / run)[0 if run == "first" else 1])
    refused = podtrace.run("merge", str(recordings[0]), str(recordings[1]))
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "share no packet" in lines[0] and "Traceback" not in refused.stderr, refused.stderr


FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "recordings"


def test_a_full_disk_writes_no_merged_file_and_says_so_in_one_line() -> None:
    """The real merge-a/merge-b recordings merged onto a 4 KiB tmpfs: the merged file (~10 KiB) does not fit."""
    mount = Path(tempfile.mkdtemp(prefix="pti22-full-"))
    sh("mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount))
    try:
        output = mount / "both.ptrec"
        result = podtrace.run("merge", str(FIXTURES / "merge-a.ptrec.gz"), str(FIXTURES / "merge-b.ptrec.gz"),
                              "-o", str(output))
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [
            f"podtrace: cannot write {output}: the disk is full; nothing was written (a merged recording is "
            "written whole or not at all)"], result.stderr
        assert list(mount.iterdir()) == []  # neither the file nor its temporary
    finally:
        sh("umount", str(mount))
        mount.rmdir()


def test_lab_drop_backend_recorded_on_each_node_merges_into_the_cross_node_journey(tmp_path: Path) -> None:
    """pt-node1 and pt-node2 recorded at once during drop-backend: the client's SYNs to web-2 leave node1 (DNAT,
    VXLAN) and die in node2's FORWARD chain; merge shows that journey, on the one machine's clock."""
    from support.lab import exclusive_lab

    from tracer.lab import faults, traffic

    with exclusive_lab(proxy_mode="iptables"):
        faults.set_fault("drop-backend", True)
        # the lab has two nodes; the client pod's own namespace is a third view (its packets before node1's DNAT)
        paths = {node: tmp_path / f"{node}.ptrec.gz" for node in ("pt-node1", "pt-node2", "pt-client")}
        # the client dials the VIP's port 80: its packets before node1's DNAT are kept by that port, in its own view
        # and node1's (what joins the two); node2 sees them after the DNAT, to web-2's 8080
        recorders = [podtrace.start("record", "-o", str(path), "--netns", node,
                                    "tcp port 8080" if node == "pt-node2" else "tcp port 8080 or tcp port 80")
                     for node, path in paths.items()]
        # and the two-node recording of the same run, that the merged one must agree with
        two_node = tmp_path / "two-node.ptrec.gz"
        # (port 80 too: the packets to the VIP, whose DNAT its nat_flows map records)
        recorders.append(podtrace.start("record", "-o", str(two_node), "--node", "pt-node1", "--node", "pt-node2",
                                        "tcp port 8080 or tcp port 80"))
        try:
            sent = traffic.probe("default/web:http", count=30, timeout=0.5)
        finally:
            results = [recorder.stop() for recorder in recorders]
        for result in results:
            assert result.returncode == 0, result.stderr
        assert sent.per_target["default/web:http"].failed > 0
    merged = podtrace.run("merge", "--json", str(paths["pt-node1"]), str(paths["pt-node2"]))
    assert merged.returncode == 0, merged.stderr
    lines = [json.loads(line) for line in merged.stdout.splitlines()]
    died = [line for line in lines if line.get("journey") and line["died"]]
    to_web2 = [j for j in died if j["flow"].startswith("tcp 10.244.0.2:") and j["flow"].endswith("> 10.244.1.2:8080")]
    assert to_web2, lines
    for journey in to_web2:
        assert journey["path"][0]["node"].endswith("/pt-node1") and journey["path"][-1]["node"].endswith("/pt-node2")
        assert journey["died"]["reason"] == "NETFILTER_DROP" and journey["died"]["node"].endswith("/pt-node2")
    assert lines[-1]["clock"].startswith("same machine clock"), lines[-1]
    _merged_report_shows_the_journeys(paths["pt-node1"], paths["pt-node2"], tmp_path / "both.ptrec.gz",
                                      client="10.244.0.2", backend="10.244.1.2", port=8080, dropped_in="pt-node2",
                                      client_pod=None, journeys=None)
    # the drops at web-2 in the merged recording are those the two-node recording of the same run saw
    for path in (*paths.values(), two_node):
        assert _report_json(path)[-1]["lost"] == 0, path  # else the recordings could not agree
    merged_drops = _drops(_report_json(tmp_path / "both.ptrec.gz"), "pt-node2", "10.244.1.2", 8080)
    assert merged_drops == _drops(_report_json(two_node), "pt-node2", "10.244.1.2", 8080) > 0
    _three_views_merge_on_one_clock(paths, tmp_path / "all.ptrec.gz", merged_drops)
    _dnat_agrees_with_the_kernel_s_nat_records(tmp_path / "all.ptrec.gz", two_node)
    _tui_journeys_view_shows_them(tmp_path / "all.ptrec.gz")


def _three_views_merge_on_one_clock(paths: dict[str, Path], out: Path, drops: int) -> None:
    """Anchored on the client pod's view, which shares packets with node1 only: all three on the one machine's
    clock, nothing estimated; the merged file holds every drop at web-2 that node2's own recording did, each on a
    journey."""
    merged = podtrace.run("merge", "--json", *(str(paths[view]) for view in ("pt-client", "pt-node1", "pt-node2")),
                          "-o", str(out))
    assert merged.returncode == 0, merged.stderr
    lines = [json.loads(line) for line in merged.stdout.splitlines()]
    clock = lines[-1]["clock"]
    assert clock.startswith("same machine clock"), clock
    died = [j for j in lines if j.get("journey") and j["died"] and j["dst"] == "10.244.1.2"]
    assert sum(j["died"]["packets"] for j in died) == drops
    assert all(j["segments"][-1]["to"].endswith("/pt-node2") for j in died), died
    # one journey per dropped connection across node1's DNAT: from the client pod's view to the drop in pt-node2,
    # the VIP dialled and web-2 chosen named, and how that is known (a NAT record or conntrack entry the kernel
    # reported: observed; else the same skb on node1: inferred)
    for journey in died:
        assert journey["path"][0]["node"].endswith("/pt-client"), journey["path"]
        dnat = journey["dnat"]
        assert dnat and (dnat["dialled"], dnat["backend"]) == ("10.96.0.10:80", "10.244.1.2:8080"), journey
        assert dnat["node"].endswith("/pt-node1") and dnat["observed"] == (dnat["how"] != "same skb"), dnat
        steps = [hop for hop in journey["path"] if hop["at"].startswith("DNAT 10.96.0.10:80 > 10.244.1.2:8080 (")]
        assert len(steps) == 1 and steps[0]["node"].endswith("/pt-node1"), journey["path"]
    assert not [j for j in lines if j.get("journey") and j["dst"] == "10.96.0.10"]  # no half-journey left
    assert _drops(_report_json(out), "pt-node2", "10.244.1.2", 8080) == drops


def _dnat_agrees_with_the_kernel_s_nat_records(merged: Path, two_node: Path) -> None:
    """The DNAT each merged journey went through (from the single-namespace recordings: no NAT records, so the skb
    seen on node1 before and after) is the rewrite the kernel's nat_flows map recorded in the two-node recording of
    the same run (its netfilter links attached): client port -> VIP rewritten to the same backend."""
    from tracer.sources.replay import ReplaySource

    source = ReplaySource(str(two_node))
    try:
        for _raw in source:
            pass
        rewrites = {(r.before.src, r.before.sport, r.before.dst, r.before.dport): (r.after.dst, r.after.dport)
                    for r in source.nat_records() if (r.before.dst, r.before.dport) != (r.after.dst, r.after.dport)}
    finally:
        source.close()
    # the client's journeys (a reply's flow runs backend -> client: its DNAT is the same connection's)
    journeys = [line for line in _report_json(merged) if line.get("journey") and line.get("dnat")
                and line["src"] == "10.244.0.2"]
    assert journeys and rewrites
    for journey in journeys:  # every recorder was attached before the first connection: none is missed
        port = int(journey["flow"].split(" ")[1].rsplit(":", 1)[1])
        dialled, dport = journey["dnat"]["dialled"].rsplit(":", 1)
        recorded = rewrites.get(("10.244.0.2", port, dialled, int(dport)))
        assert recorded is not None and f"{recorded[0]}:{recorded[1]}" == journey["dnat"]["backend"], journey


def _tui_journeys_view_shows_them(path: Path) -> None:
    """`tui --replay` of the lab's merged recording: key 7 lists the journeys, those that died first, Enter one's
    hops, through node1's DNAT (the VIP dialled, web-2 chosen), ending where it died."""
    import asyncio

    from textual.widgets import DataTable, Static

    from tui.app import PodtraceApp
    from tui.screens.journey import JourneyScreen
    from tui.sources import open_replay
    from tui.widgets.tables import RowsView

    source, info = open_replay(str(path))
    app = PodtraceApp(source, info)

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.5)
            await pilot.press("7")
            await pilot.pause(0.3)
            rows = app.query_one("#journeys-view", RowsView).shown
            assert rows and rows[0]["died at"].endswith("x NETFILTER_DROP"), rows[:1]
            await pilot.press("enter")
            await pilot.pause(0.3)
            assert isinstance(app.screen, JourneyScreen)
            hops = app.screen.query_one("#journey-hops", DataTable)
            last = [str(cell) for cell in hops.get_row_at(hops.row_count - 1)]
            assert last[1].endswith("/pt-node2") and last[2].startswith("dropped in pt-node2/"), last
            dnat = str(app.screen.query_one("#journey-dnat", Static).render())
            assert "dialled 10.96.0.10:80, DNAT to 10.244.1.2:8080 on " in dnat, dnat
            cells = [str(hops.get_row_at(row)[2]) for row in range(hops.row_count)]
            assert any(cell.startswith("DNAT 10.96.0.10:80 > 10.244.1.2:8080") for cell in cells), cells

    asyncio.run(run())
