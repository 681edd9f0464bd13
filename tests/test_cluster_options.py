"""The command line of a Valkey Cluster: what ``--redis-cluster`` accepts and refuses."""

from __future__ import annotations

import pytest

from tests.support import option_refusal, parse_options


def test_cluster_seeds_are_read_and_mean_external_storage():
    options = parse_options("--redis-cluster", "127.0.0.1:7000, node-b:7001,[::1]:7002")
    assert options["redis-cluster"] == (("127.0.0.1", 7000), ("node-b", 7001), ("::1", 7002))
    assert not options.embedded
    assert options["redis-host"] is None and options["redis-port"] is None
    assert parse_options("--redis-cluster", "h:1", "--redis-db", "0")["redis-db"] == 0


@pytest.mark.parametrize(
    ("other", "named"),
    [
        (["--redis-host", "h"], "--redis-host"),
        (["--redis-port", "6380"], "--redis-port"),
        (["--redis-socket", "/tmp/r.sock"], "--redis-socket"),
        (["--redis-sentinel", "s:26379", "--redis-service", "jobs"], "--redis-sentinel"),
    ],
)
def test_a_cluster_or_another_redis_not_both(other, named):
    message = option_refusal("--redis-cluster", "h:7000", *other)
    assert message.startswith(f"give either --redis-cluster or {named}, not both"), message
    assert "the cluster's nodes tell where each queue is" in message


def test_every_conflicting_option_is_named():
    message = option_refusal("--redis-cluster", "h:7000", "--redis-host", "h", "--redis-port", "1")
    assert message.startswith("give either --redis-cluster or --redis-host/--redis-port, not")


def test_a_service_goes_with_sentinel_not_a_cluster():
    message = option_refusal("--redis-cluster", "h:7000", "--redis-service", "jobs")
    assert message == "--redis-service goes with --redis-sentinel, not --redis-cluster"


def test_a_cluster_has_database_zero_only():
    message = option_refusal("--redis-cluster", "h:7000", "--redis-db", "3")
    assert (
        message == "--redis-db cannot be used with --redis-cluster: a cluster has database 0 only"
    )


@pytest.mark.parametrize(
    ("seeds", "says"),
    [
        ("h", "'h' is not host:port"),
        ("h:port", "'h:port' is not host:port"),
        ("h:0", "'h:0' is not host:port"),
        ("h:65536", "'h:65536' is not host:port"),
        (":7000", "':7000' is not host:port"),
        ("a:7000,b", "'b' is not host:port"),
        ("", "no cluster node given"),
        (" , ", "no cluster node given"),
    ],
)
def test_bad_seeds_are_refused_saying_which(seeds, says):
    message = option_refusal("--redis-cluster", seeds)
    assert message.startswith("--redis-cluster: "), message
    assert says in message
