"""The links along a pod's path (tracer/node/mtu_path.py) on namespaces this test builds: the veth peer is found
in the namespace the pod's veth names, not in another namespace whose interface indexes happen to match."""

from __future__ import annotations

import pytest
from support.netns import netns_pair

from tracer.benchmarks.netns import veth_pair
from tracer.node.mtu_path import collect_path

pytestmark = pytest.mark.root


def _index_and_peer(netns: str, dev: str) -> tuple[int, int]:
    from pyroute2 import NetNS

    with NetNS(netns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=dev)[0])[0]
        return int(link["index"]), int(link.get_attr("IFLA_LINK"))


def test_the_veth_peer_is_the_namespace_the_veth_names_not_an_index_lookalike() -> None:
    # The decoy's names sort first ("pt0-" < "ptt-"), and fresh namespaces number their veths alike (lo 1, veth 2):
    # an index match alone would take the decoy's namespace for the peer.
    with veth_pair("pt0", "198.19.77.1", "198.19.77.2") as decoy, netns_pair() as pair:
        assert _index_and_peer(decoy.a, "veth-a") == _index_and_peer(pair.a, "veth-a")
        path = collect_path(pair.a, pair.addr_b)
    assert path.pod is not None and (path.pod.name, path.pod.netns) == ("veth-a", pair.a)
    assert path.host_veth is not None and (path.host_veth.name, path.host_veth.netns) == ("veth-b", pair.b)
