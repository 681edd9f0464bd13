"""What an idempotent add's payload is compared by: the SHA-256 of the JSON text
``[[value, ...], ttl, delay]``, whether a value came as text or as UTF-8 bytes, and
made without building that text (a large message would be held four times over)."""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc

from restmq.engine.payload_digest import SLICE, payload_digest

MiB = 1024 * 1024


def digest_of_json_text(values, ttl: int, delay: int) -> str:
    """The definition: the digest stored with every idempotency key so far."""
    texts = [v if isinstance(v, str) else str(v, "utf-8") for v in values]
    text = json.dumps([texts, ttl, delay], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def test_the_digest_is_that_of_the_payloads_json_text_for_text_bytes_and_views():
    characters = ["a", "é", "😀", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "\t",
                  "\b", "\f", "\r", "/", "<"]  # fmt: skip
    rng = random.Random(7)
    for _ in range(500):
        texts = ["".join(rng.choice(characters) for _ in range(rng.randint(0, 30)))
                 for _ in range(rng.randint(0, 4))]  # fmt: skip
        ttl, delay = rng.choice([0, 5, 86400]), rng.choice([0, 1, 300])
        expected = digest_of_json_text(texts, ttl, delay)
        assert payload_digest(texts, ttl, delay) == expected, texts
        as_bytes = [t.encode() for t in texts]
        assert payload_digest(as_bytes, ttl, delay) == expected, texts
        assert payload_digest([memoryview(b) for b in as_bytes], ttl, delay) == expected
    lone_surrogate = ["\ud800 from a JSON escape"]  # kept as json.dumps keeps it
    assert payload_digest(lone_surrogate, 0, 0) == digest_of_json_text(lone_surrogate, 0, 0)


def test_escapes_on_either_side_of_a_slice_boundary_digest_as_in_one_piece():
    for cut in (SLICE - 1, SLICE, SLICE + 1):
        text = "x" * cut + '"\n' + "é" * 10 + "😀"
        for value in (text, text.encode()):
            assert payload_digest([value, "b"], 3, 4) == digest_of_json_text([text, "b"], 3, 4)
    assert payload_digest(["a"], 1, 2) != payload_digest(["a"], 2, 1)
    assert payload_digest(["a", "b"], 0, 0) != payload_digest(["a, b"], 0, 0)


def test_digesting_a_large_message_holds_no_copy_of_it():
    message = ("k" * (8 * MiB - 64) + "\U0001f600").encode()  # its text: 4 bytes a character
    expected = digest_of_json_text([message], 0, 0)
    tracemalloc.start()
    try:
        digest = payload_digest([memoryview(message)], 0, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == expected
    assert peak < MiB, f"digesting an 8 MiB message held {peak} bytes at once"
    with_newlines = ("line\n" * (2 * MiB)).encode()  # escaped a slice at a time
    tracemalloc.start()
    try:
        payload_digest([with_newlines], 0, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"digesting a 10 MiB message with escapes held {peak} bytes"
