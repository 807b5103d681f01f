"""The failover-test topologies of :mod:`tests.redis_topology` do what they promise.

Each test starts real `redis-server` processes (a Sentinel or a Cluster topology)
and checks them with plain redis-py, so that a failover test of the hub can trust
the helpers' waits.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from tests.redis_topology import (
    CLUSTER_SLOTS,
    FILLER_KEY,
    HOST,
    ClusterTopology,
    SentinelTopology,
)
from tests.support import MS


def assert_all_stopped(topology: SentinelTopology | ClusterTopology, directory: Path) -> None:
    assert not [node for node in topology.nodes.values() if node.alive]
    assert not directory.exists()


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    with SentinelTopology() as topology:
        topology.start()
        assert topology.dir is not None
        directory = topology.dir
        yield topology
    assert_all_stopped(topology, directory)


@pytest.fixture
def cluster_topology() -> Iterator[ClusterTopology]:
    with ClusterTopology() as topology:
        topology.start()
        assert topology.dir is not None
        directory = topology.dir
        yield topology
    assert_all_stopped(topology, directory)


def client(port: int) -> redis.Redis:
    return redis.Redis(HOST, port, decode_responses=True, socket_timeout=1000 * MS)


# -- Sentinel ---------------------------------------------------------------------------------


def test_sentinel_names_the_master_and_fails_over_to_the_replica(
    sentinel_topology: SentinelTopology,
) -> None:
    topology = sentinel_topology
    first, second = topology.data_ports
    p1, p2, p3 = topology.sentinel_ports
    assert topology.url() == (
        f"redis+sentinel://127.0.0.1:{p1},127.0.0.1:{p2},127.0.0.1:{p3}/roomcast/0"
    )
    assert topology.url(db=3).endswith("/roomcast/3")
    assert topology.sentinel_addresses == [(HOST, p1), (HOST, p2), (HOST, p3)]

    sentinel = Sentinel(topology.sentinel_addresses, socket_timeout=1000 * MS)
    assert sentinel.discover_master("roomcast") == (HOST, first)
    assert sentinel.discover_slaves("roomcast") == [(HOST, second)]
    assert topology.master_port() == first
    with client(first) as master:
        master.set("key", "value")
        assert master.wait(1, 1000) == 1

    assert topology.kill_master() == first
    assert topology.wait_for_failover() == second
    assert sentinel.discover_master("roomcast") == (HOST, second)
    with client(second) as promoted:
        assert promoted.execute_command("ROLE")[0] == "master"
        assert promoted.get("key") == "value"

    # The old master comes back as a replica of the new one, with its data.
    assert topology.restart_as_replica() == first
    assert sentinel.discover_slaves("roomcast") == [(HOST, first)]
    with client(first) as restarted:
        assert restarted.execute_command("ROLE")[0] == "slave"
        assert restarted.get("key") == "value"


def test_sentinel_promotes_a_stalled_replica_that_lacks_the_last_writes(
    sentinel_topology: SentinelTopology,
) -> None:
    topology = sentinel_topology
    first, second = topology.data_ports
    with client(first) as master:
        master.set("before", "1")
        assert topology.stall_replica() == second
        master.set("after", "1")
    assert topology.replication_stalled()

    topology.kill_master()  # while the replica is still paused
    topology.resume(second)
    assert topology.wait_for_failover() == second
    with client(second) as promoted:
        assert promoted.get("before") == "1"
        assert promoted.get("after") is None
        assert promoted.strlen(FILLER_KEY) in (0, 1 << 20)
        promoted.set("after", "2")  # writable: the new master


def test_a_failed_start_stops_what_it_started() -> None:
    topology = SentinelTopology()
    with socket.socket() as squatter:
        squatter.bind((HOST, topology.data_ports[1]))
        squatter.listen()
        with pytest.raises(RuntimeError, match="exited"):
            topology.start()
    assert topology.nodes  # the master had started
    assert not [node for node in topology.nodes.values() if node.alive]
    assert topology.dir is None


# -- Cluster ----------------------------------------------------------------------------------


def cluster_client(topology: ClusterTopology) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in topology.startup_nodes
        ],
        decode_responses=True,
        socket_timeout=1000 * MS,
    )


def test_cluster_covers_every_slot_with_three_replicated_masters(
    cluster_topology: ClusterTopology,
) -> None:
    topology = cluster_topology
    p1, p2, p3 = topology.ports[:3]
    assert topology.url() == f"redis+cluster://127.0.0.1:{p1},127.0.0.1:{p2},127.0.0.1:{p3}/0"
    assert sorted(port for _, port in topology.startup_nodes) == sorted(topology.ports)

    masters = topology.masters()
    assert len(masters) == 3
    slots = sorted(
        slot for ranges in masters.values() for a, b in ranges for slot in range(a, b + 1)
    )
    assert slots == list(range(CLUSTER_SLOTS))
    replicas = {topology.replica_of(port) for port in masters}
    assert len(replicas) == 3
    assert replicas | set(masters) == set(topology.ports)
    for replica in replicas:
        with client(replica) as node:
            assert node.execute_command("ROLE")[0] == "slave"

    with cluster_client(topology) as cluster:
        assert cluster.cluster_info()["cluster_state"] == "ok"
        for i in range(20):
            key = f"key-{i}"
            cluster.set(key, i)
            node = cluster.get_node_from_key(key)
            assert node is not None and node.port == topology.master_for_key(key)
            assert cluster.get(key) == str(i)


def test_cluster_promotes_the_replica_of_a_killed_master(
    cluster_topology: ClusterTopology,
) -> None:
    topology = cluster_topology
    old = topology.master_for_key("key")
    replica = topology.replica_of(old)
    ranges = topology.masters()[old]
    with client(old) as master:
        master.set("key", "value")
        assert master.wait(1, 1000) == 1

    topology.kill(old)
    assert topology.wait_for_promotion(old) == replica
    assert topology.masters()[replica] == ranges
    assert old not in topology.masters()
    assert topology.master_for_key("key") == replica
    for port in topology.ports:
        if port != old:
            with client(port) as node:
                assert node.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
    with cluster_client(topology) as cluster:
        assert cluster.get("key") == "value"
        cluster.set("key", "new")
        node = cluster.get_node_from_key("key")
        assert node is not None and node.port == replica
