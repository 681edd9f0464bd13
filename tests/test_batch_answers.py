"""A batch pop's answer is written without building a dict per message; it must be the
very text the broker's JSON encoder gives for those dicts."""

from __future__ import annotations

from restmq.engine.messages import TakenMessage
from restmq.web import shapes
from restmq.web.handlers.base import encode_json

AWKWARD = [
    "plain",
    "",
    'quotes " and \\ backslashes',
    "control \x00\x1f\n\t\r characters",
    "non-ASCII: café ☃ 𝄞 and a lone surrogate \udc80",
    "</script>",
    '{"json": [1, 2.5, null]}',
]


def test_a_batch_answer_is_exactly_what_the_json_encoder_writes():
    messages = [
        TakenMessage(f"q:{i}", value, count=i % 3, ttl_ms=-1) for i, value in enumerate(AWKWARD)
    ]
    expected = encode_json([shapes.message(m) for m in messages])
    assert shapes.messages_json(messages) == expected
    assert shapes.messages_json([]) == encode_json([]) == "[]"
