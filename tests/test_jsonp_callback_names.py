"""A JSONP callback is an ASCII JavaScript name, as ``\\w`` means in JavaScript."""

from __future__ import annotations

import json
import urllib.parse

import pytest


def get_stats(broker, callback: str):
    return broker.get("/stats/?" + urllib.parse.urlencode({"callback": callback}))


@pytest.mark.parametrize("name", ["Uå", "café", "x٣", "\uff46\uff55\uff4c\uff4c"])
def test_a_callback_with_letters_or_digits_beyond_ascii_is_refused(shared_broker, name):
    response = get_stats(shared_broker, name)
    assert response.status == 400
    assert json.loads(response.body)["error"].startswith("invalid callback")


def test_an_ascii_javascript_path_is_a_callback(shared_broker):
    response = get_stats(shared_broker, "app.on_message$2")
    assert response.status == 200
    assert response.headers["content-type"] == "application/javascript; charset=UTF-8"
    assert response.body.startswith(b"app.on_message$2({")
