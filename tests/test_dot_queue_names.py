"""Queue names . and .. are refused: clients remove such path segments before sending."""

from __future__ import annotations

import pytest

from tests.support import assert_error, command


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused_on_every_front_end(shared_broker, name):
    b = shared_broker
    encoded = name.replace(".", "%2E")
    expected = f"invalid queue name {name!r}"
    assert_error(b.post("/", queue=name, value="v"), 400, expected)
    assert_error(b.get(f"/?queue={encoded}"), 400, expected)
    assert_error(b.post(f"/q/{encoded}", value="v"), 400, expected)
    assert_error(b.get(f"/stats/{encoded}"), 400, expected)
    assert_error(command(b, {"cmd": "add", "queue": name, "value": "v"}), 400, expected)
    assert b.redis("SISMEMBER", "QUEUESET", name) == 0


def test_names_with_dots_inside_are_still_queues(shared_broker, queue):
    b = shared_broker
    for name in (f"{queue}.a", f"...{queue}", f"{queue}.."):
        assert b.post(f"/q/{name}", value="v").status == 200
        assert b.get(f"/q/{name}").json()["value"] == "v"
