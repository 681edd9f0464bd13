"""A request body is held about once on its way to Redis, so the broker's memory
follows --max-buffered: 40 concurrent 8 MiB POSTs with the default budget grow the
broker by at most 1.5 times the budget, and every message is stored byte for byte."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import tracemalloc
from urllib.parse import parse_qs

import pytest

from restmq.defaults import DEFAULT_MAX_BODY
from restmq.web.connection.form_body import NotUtf8, parse_form
from restmq.web.utf8_check import SLICE, is_utf8
from tests.support import request

MiB = 1024 * 1024
BUDGET = 256 * MiB  # the default --max-buffered
CLIENTS = 40
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def proc_status(pid: int, name: str) -> int:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM: the peak RSS), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def large_message(i: int) -> tuple[str, bytes, bytes]:
    """Message ``i``: (Content-Type, request body, the UTF-8 bytes stored), close to
    --max-body. Forms and JSON, ASCII and not, plain and escaped, each one distinct."""
    tag = f"{i:02d}-"
    room = DEFAULT_MAX_BODY - 64
    kind = i % 4
    if kind == 0:  # a plain form field: the body's own bytes are the message
        value = tag + "f" * room
        return FORM, f"value={value}".encode(), value.encode()
    if kind == 1:  # a form field with %-escapes and "+": unquoted into a copy
        value = tag + "g" * room + " é"
        return FORM, f"value={tag}{'g' * room}+%C3%A9".encode(), value.encode()
    if kind == 2:
        value = tag + "j" * room
        return JSON, json.dumps({"value": value}).encode(), value.encode()
    # JSON sent as raw UTF-8, one character beyond the BMP: 4 bytes a character as text
    value = tag + "k" * room + "\U0001f600"
    return JSON, json.dumps({"value": value}, ensure_ascii=False).encode(), value.encode()


def post_until_stored(port: int, queue: str, content_type: str, body: bytes, key: str):
    """POST as a careful client would: a 503 "broker busy" is retried after its
    Retry-After; a 504 (stored state unknown) or a lost connection is retried too, and
    safely, because the add carries an Idempotency-Key (a repeat of an add that was
    stored is answered again, and stores nothing)."""
    headers = {"Content-Type": content_type, "Idempotency-Key": key}
    outcome: object = None
    for _ in range(60):
        try:
            outcome = request(port, "POST", f"/q/{queue}", body=body, headers=headers, timeout=120)
        except OSError as error:  # e.g. reset while a refused body was still being sent
            outcome = error
            time.sleep(1)  # a client's pause before it tries again
            continue
        if outcome.status == 503:
            assert json.loads(outcome.body)["error"].startswith("broker busy"), outcome.body
            time.sleep(float(outcome.headers["retry-after"]))  # the pause the broker asked for
        elif outcome.status != 504:
            return outcome
    return outcome


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A large write waits at most 1.5 s to go out to Valkey and is refused with 503 after
# that: on a busy machine the forty messages take several rounds of retries.
@pytest.mark.timeout(600)
def test_forty_large_posts_grow_the_broker_by_at_most_one_and_a_half_budgets(broker_factory, queue):
    broker = broker_factory()  # default --max-buffered (256 MiB) and --max-body (8 MiB)
    pid = broker.proc.pid
    assert broker.post(f"/q/{queue}-warm-up", value="w").status == 200
    start = proc_status(pid, "VmRSS")
    messages = [large_message(i) for i in range(CLIENTS)]
    answers: list = [None] * CLIENTS

    def client(i: int) -> None:
        content_type, body, _ = messages[i]
        try:
            answers[i] = post_until_stored(broker.port, queue, content_type, body, f"m{i}")
        except BaseException as error:  # reported by the assertion below
            answers[i] = error

    clients = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    peak_growth = proc_status(pid, "VmHWM") - start

    outcomes = [getattr(a, "status", None) or repr(a)[:200] for a in answers]
    assert outcomes == [200] * CLIENTS, outcomes
    assert peak_growth <= 1.5 * BUDGET, (
        f"broker RSS peaked {peak_growth / MiB:.0f} MiB above its start: "
        f"{peak_growth / BUDGET:.2f} x --max-buffered"
    )
    # Every message is stored whole, once.
    stored = []
    for _ in range(CLIENTS):
        popped = request(broker.port, "GET", f"/q/{queue}", timeout=60)
        assert popped.status == 200
        stored.append(digest(popped.json()["value"].encode("utf-8")))
    assert request(broker.port, "GET", f"/q/{queue}").status == 204
    assert sorted(stored) == sorted(digest(stored_bytes) for _, _, stored_bytes in messages)


# -- form bodies read as bytes --------------------------------------------------


def test_form_fields_read_as_bytes_are_those_cyclone_reads():
    bodies = [
        b"value=plain", b"value=a+b%20c&msg=%C3%A9t%C3%A9", b"a=1&a=2&&b=&=x&c",
        b"k%3D=v%26w", "value=é+ü".encode(), b"value=%FF&x=1", b"%FF=v", b"x=%2", b"",
    ]  # fmt: skip
    for body in bodies:
        form = parse_form(body)
        read = {name: [bytes(v).decode("utf-8", "replace") for v in values]
                for name, values in form.fields.items()}  # fmt: skip
        assert read == parse_qs(body.decode("utf-8")), body
    assert parse_form(b"value=%FF&x=1").undecodable == "value"
    assert parse_form(b"x=1&%FF=v").undecodable == "\ufffd"
    assert parse_form(b"value=%C3%A9").undecodable is None


def test_a_plain_form_value_is_a_view_of_the_body_and_an_escaped_one_is_counted():
    body = b"value=" + b"v" * 1000 + b"&other=a%20b"
    form = parse_form(body)
    value = form.fields["value"][0]
    assert isinstance(value, memoryview) and value.obj is body  # no copy of the message
    assert form.fields["other"] == [b"a b"]
    assert form.copied == 3  # the unquoted bytes are held besides the body
    try:
        parse_form(b"value=\xff")
    except NotUtf8:
        pass
    else:
        raise AssertionError("a body that is not UTF-8 was read")


def test_a_body_is_checked_as_utf8_a_slice_at_a_time():
    for cut in range(SLICE - 4, SLICE + 4):  # a character cut by every slice boundary nearby
        whole = b"a" * cut + "😀".encode() + "é".encode() + b"z"
        broken = whole[: cut + 2] + b"zz" + whole[cut + 2 :]  # a character cut short
        assert is_utf8(whole) and is_utf8(memoryview(whole))
        assert not is_utf8(broken), cut
        assert not is_utf8(whole[: cut + 3]), "the body ends inside a character"
    assert is_utf8(b"") and not is_utf8(b"\xff") and not is_utf8(b"a" * SLICE + b"\xc0\xaf")
    message = ("k" * (8 * MiB - 64) + "\U0001f600").encode()  # its text: 4 bytes a character
    tracemalloc.start()
    try:
        assert is_utf8(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"checking an 8 MiB body held {peak} bytes at once"
