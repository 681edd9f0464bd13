"""The command line of Sentinel and durable writes: what is accepted, what is refused and why."""

from __future__ import annotations

import pytest

from restmq.storage.sentinel import parse_sentinels
from tests.support import option_refusal, parse_options


@pytest.mark.parametrize(
    ("text", "sentinels"),
    [
        ("10.0.0.1:26380", (("10.0.0.1", 26380),)),
        ("a:1, b:2,c", (("a", 1), ("b", 2), ("c", 26379))),
        ("[::1]:5000,[fe80::1]", (("::1", 5000), ("fe80::1", 26379))),
        ("sentinel.example", (("sentinel.example", 26379),)),
    ],
)
def test_sentinel_addresses(text, sentinels):
    assert parse_sentinels(text) == sentinels


@pytest.mark.parametrize("text", ["", ",", "a:b", "a:0", "a:70000", ":26379", "[::1]:x"])
def test_bad_sentinel_addresses(text):
    with pytest.raises(ValueError):
        parse_sentinels(text)


def test_sentinel_mode_is_external_storage():
    options = parse_options(
        "--redis-sentinel", "127.0.0.1:26379,127.0.0.2", "--redis-service", "jobs"
    )
    assert not options.embedded
    assert options["redis-sentinel"] == (("127.0.0.1", 26379), ("127.0.0.2", 26379))
    assert options["redis-host"] is None and options["redis-port"] is None


def test_sentinel_needs_a_service():
    assert "--redis-service" in option_refusal("--redis-sentinel", "127.0.0.1:26379")


def test_a_service_needs_sentinel():
    assert "--redis-sentinel" in option_refusal("--redis-service", "jobs")


@pytest.mark.parametrize("other", [["--redis-host", "h"], ["--redis-port", "6380"],
                                   ["--redis-socket", "/tmp/r.sock"]])  # fmt: skip
def test_sentinel_or_a_fixed_server_not_both(other):
    message = option_refusal("--redis-sentinel", "s:26379", "--redis-service", "jobs", *other)
    assert "not both" in message


def test_a_bad_sentinel_address_is_named():
    message = option_refusal("--redis-sentinel", "s:port", "--redis-service", "jobs")
    assert message.startswith("--redis-sentinel: 's:port'")


def test_waiting_for_replicas_needs_an_external_redis():
    assert "embedded Valkey has none" in option_refusal("--redis-wait-replicas", "1")
    assert (
        parse_options("--redis-port", "6380", "--redis-wait-replicas", "1")["redis-wait-replicas"]
        == 1
    )
    assert parse_options()["redis-wait-replicas"] == 0
    assert "cannot be negative" in option_refusal(
        "--redis-port", "6380", "--redis-wait-replicas", "-1"
    )
