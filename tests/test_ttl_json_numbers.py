"""A ttl in a JSON body is a JSON number: 60.0 is the whole number 60, 1.5 is refused."""

from __future__ import annotations

import json
import time

from tests.support import STORAGE_MODES

JSON_BODY = {"Content-Type": "application/json"}


def post_json(broker, path: str, body: dict):
    return broker.request("POST", path, body=json.dumps(body), headers=JSON_BODY)


@STORAGE_MODES
def test_a_whole_number_written_with_a_fraction_is_a_ttl(shared_broker, queue):
    assert post_json(shared_broker, f"/q/{queue}", {"value": "brief", "ttl": 1.0}).status == 200
    command = {"cmd": "add", "queue": queue, "value": "brief too", "ttl": 1.0}
    answer = post_json(shared_broker, "/queue", command)
    assert answer.status == 200, answer.body
    time.sleep(1.5)
    assert shared_broker.get(f"/q/{queue}").status == 204  # both expired


def test_a_fractional_ttl_is_refused(shared_broker, queue):
    answer = post_json(shared_broker, f"/q/{queue}", {"value": "x", "ttl": 1.5})
    assert answer.status == 400
    assert "ttl must be a positive whole number" in json.loads(answer.body)["error"]
    assert shared_broker.get(f"/q/{queue}").status == 204
