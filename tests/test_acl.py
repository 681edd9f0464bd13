"""acl.conf against real brokers: clients on loopback source addresses 127.0.0.x.

On Linux every address of 127.0.0.0/8 is a loopback address a client can bind,
so one broker on 127.0.0.1 sees connections "from" several hosts.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task
from websockets.exceptions import InvalidStatus

from restmq.access import acl, passwd
from restmq.access.acl_file import parse_rules
from restmq.access.addresses import parse_address
from restmq.access.control import AccessControl
from restmq.access.rules import AccessRules
from restmq.access.watcher import RELOAD_INTERVAL
from tests.support import (
    BIN,
    CHALLENGE,
    HttpStream,
    Response,
    WebSocketStream,
    assert_error,
    basic,
    call,
    error_of,
    make_hash,
    run_twistd,
    start_broker,
    startup_refusal,
    valkey_pids,
    wait_answering,
    wait_for,
)

# -- the main broker ---------------------------------------------------------------------

PRODUCER_PASSWORD = "pr0d:uc3r %s $x"  # ':' '%' '$' and a space survive the INI file
WS_PASSWORD = "w$ocket"

MAIN_ACL = """\
# the rules every test of this module checks
[rest:producer]
hosts_allow = 127.0.0.1 127.0.0.2 127.0.0.9
hosts_deny = all
username = producer
password = {producer_hash}

[rest:consumer]
hosts_allow = all
hosts_deny = 127.0.0.3 127.0.0.16/30 127.0.1.

[comet:consumer]
hosts_allow = 127.0.0.1 127.0.0.4
hosts_deny = all
username = comet
password = plain c0met

[websocket:consumer]
hosts_allow = 127.0.0.1 127.0.0.5
hosts_deny = all
username = ws
password = {ws_hash}
"""
PRODUCER = basic("producer", PRODUCER_PASSWORD)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    text = MAIN_ACL.format(
        producer_hash=make_hash(PRODUCER_PASSWORD), ws_hash=make_hash(WS_PASSWORD)
    )
    broker = start_broker(
        tmp_path_factory.mktemp("acl-broker"),
        text,
        "--trusted-proxies",
        "127.0.0.9, 127.0.0.64/30",
    )
    try:
        broker.wait_ready()
        yield broker
    finally:
        broker.stop()


CONSUMER_ROUTES = [
    "/?queue={q}",
    "/q/{q}",
    "/q/",
    "/q/{q}/subscriptions",
    "/p/{q}",
    "/control/{q}",
    "/control/",
    "/stats/{q}",
    "/stats/",
    "/j/{q}",
    "/queue",
    "/static/index.html",
]


@pytest.mark.parametrize("route", CONSUMER_ROUTES)
def test_denied_address_gets_403_on_every_consumer_route(guarded, queue, route):
    path = route.format(q=queue)
    refused = call(guarded.port, "GET", path, source="127.0.0.3")
    assert refused.status == 403
    assert error_of(refused) == "access from 127.0.0.3 is not allowed (rest:consumer)"
    assert "www-authenticate" not in refused.headers
    # the same request from an address on neither list goes through
    allowed = call(guarded.port, "GET", path, source="127.0.0.2")
    assert allowed.status in (200, 204, 302, 404), (path, allowed.status, allowed.body)


def test_cidr_and_prefix_entries_match_whole_networks(guarded, queue):
    for source in ("127.0.0.16", "127.0.0.19", "127.0.1.7"):
        response = call(guarded.port, "GET", f"/q/{queue}", source=source)
        assert response.status == 403, source
    for source in ("127.0.0.15", "127.0.0.20", "127.0.10.1"):
        response = call(guarded.port, "GET", f"/q/{queue}", source=source)
        assert response.status == 204, source


PRODUCER_CALLS = [
    ("POST", "/", {"queue": "{q}", "value": "v"}),
    ("POST", "/q/{q}", {"value": "v"}),
    ("DELETE", "/q/{q}", None),
    ("POST", "/queue", {"body": '{{"cmd": "add", "queue": "{q}", "value": "v"}}'}),
    ("POST", "/p/{q}", {"policy": "roundrobin"}),
    ("POST", "/control/{q}", {"status": "stop"}),
]


@pytest.mark.parametrize(("method", "path", "form"), PRODUCER_CALLS)
def test_every_producer_route_wants_the_password(guarded, queue, method, path, form):
    path = path.format(q=queue)
    form = {k: v.format(q=queue) for k, v in form.items()} if form else None
    for headers in ({}, basic("producer", "wrong"), basic("someone", PRODUCER_PASSWORD)):
        refused = call(guarded.port, method, path, source="127.0.0.2", form=form, headers=headers)
        assert refused.status == 401
        assert refused.headers["www-authenticate"] == CHALLENGE
        assert "rest:producer" in error_of(refused)
    # nothing was stored or changed by the refused requests
    assert guarded.redis("LLEN", f"{queue}:queue") == 0
    assert guarded.redis("EXISTS", f"{queue}:queuepolicy", f"queuestat::{queue}") == 0
    done = call(guarded.port, method, path, source="127.0.0.2", form=form, headers=PRODUCER)
    assert done.status == 200, done.body


def test_creating_and_ending_a_subscription_want_the_producer_password(guarded, queue):
    path = f"/q/{queue}/subscriptions/billing"
    for method in ("PUT", "DELETE"):
        for headers in ({}, basic("producer", "wrong")):
            refused = call(guarded.port, method, path, source="127.0.0.2", headers=headers)
            assert refused.status == 401
            assert "rest:producer" in error_of(refused)
        if method == "PUT":  # the refused requests changed nothing
            assert guarded.redis("EXISTS", f"{queue}:subscriptions") == 0
        done = call(guarded.port, method, path, source="127.0.0.2", headers=PRODUCER)
        assert done.status == (201 if method == "PUT" else 200), done.body
    listed = call(guarded.port, "GET", f"/q/{queue}/subscriptions", source="127.0.0.2")
    assert listed.json() == {"queue": queue, "subscriptions": []}


def test_producer_refused_address_gets_403_even_with_the_password(guarded, queue):
    # 127.0.0.10 must not match the allowed 127.0.0.1: addresses match exactly
    for source in ("127.0.0.3", "127.0.0.10"):
        response = call(
            guarded.port,
            "POST",
            f"/q/{queue}",
            source=source,
            form={"value": "v"},
            headers=PRODUCER,
        )
        assert response.status == 403
        assert error_of(response) == f"access from {source} is not allowed (rest:producer)"
    assert guarded.redis("LLEN", f"{queue}:queue") == 0


def test_basic_scheme_is_case_insensitive_and_the_message_arrives(guarded, queue):
    token = PRODUCER["Authorization"].split()[1]
    response = call(
        guarded.port,
        "POST",
        f"/q/{queue}",
        source="127.0.0.1",
        form={"value": "hello"},
        headers={"Authorization": f"basic {token}"},
    )
    assert response.status == 200
    assert response.text == f"{queue}:1\r\n"
    got = call(guarded.port, "GET", f"/q/{queue}", source="127.0.0.2")
    assert got.json()["value"] == "hello"


def test_a_damaged_authorization_header_is_a_401(guarded, queue):
    for value in ("Basic !!!notbase64", "Bearer abc", "Basic " + base64.b64encode(b"x").decode()):
        response = call(
            guarded.port,
            "POST",
            f"/q/{queue}",
            source="127.0.0.2",
            form={"value": "v"},
            headers={"Authorization": value},
        )
        assert response.status == 401, value
        assert response.headers["www-authenticate"] == CHALLENGE


def test_comet_section_guards_c_with_basic_only(guarded, queue):
    port = guarded.port
    assert call(port, "GET", f"/c/{queue}", source="127.0.0.6").status == 403
    missing = call(port, "GET", f"/c/{queue}", source="127.0.0.4")
    assert missing.status == 401
    assert missing.headers["www-authenticate"] == CHALLENGE
    cookie = call(
        port, "GET", f"/c/{queue}", source="127.0.0.4", headers={"Cookie": "auth=comet:plain c0met"}
    )
    assert cookie.status == 401, "the auth cookie is for WebSockets only"
    stream = HttpStream(
        port, queue, source="127.0.0.4", headers=basic("comet", "plain c0met")
    ).start()
    try:
        assert stream.response.status == 200
        wait_for(
            lambda: guarded.get(f"/stats/{queue}").json()["consumers"] == 1,
            10,
            what="the COMET consumer",
        )
        key = call(
            port, "POST", f"/q/{queue}", form={"value": "to comet"}, headers=PRODUCER
        ).text.strip()
        assert stream.next_message(10) == {"key": key, "value": "to comet"}
    finally:
        stream.close()


def ws_from(port: int, queue: str, source: str, **kwargs) -> WebSocketStream:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return WebSocketStream(port, queue, sock=sock, **kwargs)


def test_websocket_section_takes_the_auth_cookie_or_basic(guarded, queue):
    port = guarded.port
    with pytest.raises(InvalidStatus) as refused:
        ws_from(port, queue, "127.0.0.6")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as missing:
        ws_from(port, queue, "127.0.0.5")
    assert missing.value.response.status_code == 401
    assert missing.value.response.headers["WWW-Authenticate"] == CHALLENGE
    with pytest.raises(InvalidStatus) as wrong:
        ws_from(port, queue, "127.0.0.5", additional_headers={"Cookie": "auth=ws:nope"})
    assert wrong.value.response.status_code == 401

    # the original's cookie, among others (SimpleCookie would drop them all at the bad one)
    cookie = f'theme=dark; x="a;b; auth=ws:{WS_PASSWORD}; lang=en'
    by_cookie = ws_from(port, queue, "127.0.0.5", additional_headers={"Cookie": cookie}).start()
    by_basic = ws_from(
        port, queue, "127.0.0.5", additional_headers=basic("ws", WS_PASSWORD)
    ).start()
    try:
        wait_for(
            lambda: guarded.get(f"/stats/{queue}").json()["consumers"] == 2,
            10,
            what="two WebSocket consumers",
        )
        key = call(
            port, "POST", f"/q/{queue}", form={"value": "to ws"}, headers=PRODUCER
        ).text.strip()
        assert by_cookie.next_message(10) == {"key": key, "value": "to ws"}
        assert by_basic.next_message(10) == {"key": key, "value": "to ws"}
    finally:
        by_cookie.close()
        by_basic.close()


# -- the JSON protocol (POST /queue) checks rights per command ------------------------

SPLIT_ACL = """\
# 127.0.0.2 may only consume, 127.0.0.3 may only produce; 127.0.0.1 may do both
[rest:producer]
hosts_allow = 127.0.0.1 127.0.0.3
hosts_deny = all

[rest:consumer]
hosts_allow = 127.0.0.1 127.0.0.2
hosts_deny = all
"""
CONSUMER_ONLY, PRODUCER_ONLY = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def split_broker(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("split-acl"), SPLIT_ACL)
    try:
        wait_answering(broker)
        broker.wait_ready()
        yield broker
    finally:
        broker.stop()


def send(broker, source: str, cmd, as_json: bool, path: str = "/queue"):
    """A JSON-protocol command from ``source``: as an application/json body or form field."""
    if as_json:
        body = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
        headers = {"Content-Type": "application/json"}
        return call(broker.port, "POST", path, source=source, body=body, headers=headers)
    text = cmd.decode() if isinstance(cmd, bytes) else json.dumps(cmd)
    return call(broker.port, "POST", path, source=source, form={"body": text})


def refused(response, address: str, section: str) -> None:
    assert response.status == 403, response.body
    assert error_of(response) == f"access from {address} is not allowed ({section})"


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_a_consumer_only_client_may_get_and_take_but_not_add_or_del(split_broker, queue, as_json):
    b = split_broker
    key = send(b, "127.0.0.1", {"cmd": "add", "queue": queue, "value": "v1"}, as_json).json()["key"]
    send(b, "127.0.0.1", {"cmd": "add", "queue": queue, "value": "v2"}, as_json)

    got = send(b, CONSUMER_ONLY, {"cmd": "get", "queue": queue}, as_json)
    assert got.status == 200, got.body
    assert got.json()["value"] == "v1"
    taken = send(b, CONSUMER_ONLY, {"cmd": "take"}, as_json, path=f"/queue/{queue}")
    assert taken.status == 200, taken.body
    assert (taken.json()["key"], taken.json()["value"]) == (key, "v1")

    for cmd in (
        {"cmd": "add", "queue": queue, "value": "sneaky"},
        {"cmd": "del", "queue": queue, "key": f"{queue}:2"},
        {"cmd": "nope", "queue": queue},  # unknown: judged as a producer's command
        {"queue": queue},
        ["take", queue],
        b"{not json",
    ):
        refused(send(b, CONSUMER_ONLY, cmd, as_json), CONSUMER_ONLY, "rest:producer")
    # nothing was added or deleted: v2 is still the only message
    assert b.redis("LRANGE", f"{queue}:queue", "0", "-1") == [f"{queue}:2"]
    assert b.redis("GET", f"{queue}:2") == "v2"


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_a_producer_only_client_may_add_and_del_but_not_get_or_take(split_broker, queue, as_json):
    b = split_broker
    added = send(b, PRODUCER_ONLY, {"cmd": "add", "queue": queue, "value": "v1"}, as_json)
    assert added.status == 200, added.body
    assert added.json() == {"queue": queue, "value": "v1", "key": f"{queue}:1"}
    send(b, PRODUCER_ONLY, {"cmd": "add", "queue": queue, "value": "v2"}, as_json)

    for cmd in ({"cmd": "get", "queue": queue}, {"cmd": "take", "queue": queue}):
        refused(send(b, PRODUCER_ONLY, cmd, as_json), PRODUCER_ONLY, "rest:consumer")
    assert sorted(b.redis("LRANGE", f"{queue}:queue", "0", "-1")) == [f"{queue}:1", f"{queue}:2"]

    deleted = send(b, PRODUCER_ONLY, {"cmd": "del", "queue": queue, "key": f"{queue}:1"}, as_json)
    assert deleted.status == 200, deleted.body
    assert deleted.json()["deleted"] is True
    # a producer is told what is wrong with a command it may send
    assert_error(send(b, PRODUCER_ONLY, {"cmd": "nope", "queue": queue}, as_json), 400)
    assert_error(send(b, PRODUCER_ONLY, b"{not json", as_json), 400, "malformed JSON")
    # the consumer takes what is left
    taken = send(b, CONSUMER_ONLY, {"cmd": "take", "queue": queue}, as_json)
    assert taken.json()["value"] == "v2"


def test_get_queue_still_needs_consumer_rights(split_broker):
    response = call(split_broker.port, "GET", "/queue", source=PRODUCER_ONLY)
    refused(response, PRODUCER_ONLY, "rest:consumer")
    assert call(split_broker.port, "GET", "/queue", source=CONSUMER_ONLY).status == 302


# -- forwarded addresses -----------------------------------------------------------------


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(guarded, queue):
    port = guarded.port
    spoof = call(
        port,
        "GET",
        f"/q/{queue}",
        source="127.0.0.3",
        headers={"X-Forwarded-For": "127.0.0.2", "X-Real-IP": "127.0.0.2"},
    )
    assert spoof.status == 403
    assert "127.0.0.3" in error_of(spoof)
    innocent = call(
        port, "GET", f"/q/{queue}", source="127.0.0.2", headers={"X-Forwarded-For": "127.0.0.3"}
    )
    assert innocent.status == 204


def test_a_trusted_proxy_is_believed_right_to_left(guarded, queue):
    port = guarded.port

    def via_proxy(headers: dict, proxy: str = "127.0.0.9") -> Response:
        return call(port, "GET", f"/q/{queue}", source=proxy, headers=headers)

    assert via_proxy({}).status == 204  # the proxy's own request
    assert via_proxy({"X-Forwarded-For": "127.0.0.3"}).status == 403
    assert via_proxy({"X-Real-IP": "127.0.0.3"}).status == 403
    assert via_proxy({"X-Forwarded-For": "127.0.0.2"}).status == 204
    # the client wrote "127.0.0.2" itself; the proxy appended the address it really saw
    spoof = via_proxy({"X-Forwarded-For": "127.0.0.2, 127.0.0.3"})
    assert spoof.status == 403
    assert "127.0.0.3" in error_of(spoof)
    # a chain of trusted proxies (127.0.0.64/30) is skipped
    assert via_proxy({"X-Forwarded-For": "127.0.0.3, 127.0.0.65"}, proxy="127.0.0.66").status == 403
    assert via_proxy({"X-Forwarded-For": "127.0.0.2, 127.0.0.65"}, proxy="127.0.0.66").status == 204
    # producers behind the proxy: the forwarded address, then the password
    produce = {"X-Forwarded-For": "127.0.0.7", **PRODUCER}
    assert call(port, "POST", f"/q/{queue}", source="127.0.0.9", headers=produce).status == 403
    produce = {"X-Forwarded-For": "127.0.0.2", **PRODUCER}
    response = call(
        port, "POST", f"/q/{queue}", source="127.0.0.9", headers=produce, form={"value": "p"}
    )
    assert response.status == 200


# -- loading and reloading ---------------------------------------------------------------


def deny_consumer(address: str) -> str:
    return f"[rest:consumer]\nhosts_deny = {address}\n"


def test_changes_apply_without_restart(tmp_path, queue):
    broker = start_broker(tmp_path / "reload", deny_consumer("127.0.0.3"))
    acl_file = broker.workdir / "acl.conf"
    try:
        broker.wait_ready()

        def status(source: str) -> int:
            return call(broker.port, "GET", f"/q/{queue}", source=source).status

        assert (status("127.0.0.3"), status("127.0.0.4")) == (403, 204)
        acl_file.write_text(deny_consumer("127.0.0.4"))
        # checked every 5 s; allow for a busy machine
        wait_for(lambda: status("127.0.0.4") == 403, 15, interval=0.2, what="the new rules")
        assert status("127.0.0.3") == 204
        assert f"access control: reloaded {acl_file}" in broker.log()
    finally:
        broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_broken_change_keeps_the_rules_until_the_file_is_repaired(tmp_path, log_lines):
    # The broker's reload loop, in process: a Clock stands in for the 5 s between looks.
    acl_file = tmp_path / "acl.conf"
    acl_file.write_text(deny_consumer("127.0.0.3"))
    access = AccessControl(str(acl_file))
    access.load()
    clock = task.Clock()
    access.start_watching(clock)

    def edit(text: str) -> None:
        """Write the file as a person would: a while after the broker last looked at it."""
        later = acl_file.stat().st_mtime_ns + 1_000_000_000
        acl_file.write_text(text)
        os.utime(acl_file, ns=(later, later))
        clock.advance(RELOAD_INTERVAL)

    async def statuses(*addresses: str) -> tuple[int, ...]:
        return tuple([await verdict(access.rules, address) for address in addresses])

    try:
        assert await statuses("127.0.0.3", "127.0.0.4") == (403, 200)
        edit(deny_consumer("127.0.0.4"))
        assert await statuses("127.0.0.3", "127.0.0.4") == (200, 403)
        assert f"access control: reloaded {acl_file}" in log_lines

        edit("[rest:consumer]\nhosts_deny = 127.0.0.3 not-an-address\n")
        complaint = next(line for line in log_lines if "keeping the previous rules" in line)
        assert "'not-an-address' is not an IP address" in complaint
        assert await statuses("127.0.0.3", "127.0.0.4") == (200, 403)

        edit(deny_consumer("127.0.0.5"))
        assert await statuses("127.0.0.4", "127.0.0.5") == (200, 403)
    finally:
        access.stop_watching()


BROKEN_FILES = [
    ("[rest:producer]\nhosts_allow = 127.0.0.1\n[rest:producer]\n", "already exists"),
    ("hosts_allow = 127.0.0.1\n", "no section headers"),
    ("[rest:producers]\nhosts_deny = all\n", "unknown section [rest:producers]"),
    ("[rest:consumer]\nhost_allow = 127.0.0.1\n", "unknown key 'host_allow'"),
    ("[rest:consumer]\nhosts_allow = example.com\n", "host names are not supported"),
    ("[rest:consumer]\nhosts_allow = 10.0.0.0/33\n", "not a CIDR network"),
    ("[rest:consumer]\nusername = lero\n", "username and password go together"),
    ("[rest:consumer]\nusername = a\npassword = scrypt$1$2$3\n", "scrypt$N$r$p$SALT$KEY"),
]


@pytest.mark.parametrize(("text", "complaint"), BROKEN_FILES)
def test_a_broken_file_is_refused_saying_where_and_what(tmp_path, text, complaint):
    (tmp_path / "acl.conf").write_text(text)
    message = startup_refusal(tmp_path)
    assert message.startswith("restmq: ")
    assert str(tmp_path / "acl.conf") in message
    assert complaint in message
    assert "Traceback" not in message
    assert not (tmp_path / "restmq-data").exists(), "nothing starts before the ACL is read"


def test_a_broken_file_stops_the_broker_at_startup(tmp_path):
    text, complaint = BROKEN_FILES[2]
    (tmp_path / "acl.conf").write_text(text)
    result = run_twistd(tmp_path)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "restmq: " in message
    assert str(tmp_path / "acl.conf") in message
    assert complaint in message
    assert "Traceback" not in message
    assert not (tmp_path / "restmq-data").exists(), "nothing starts before the ACL is read"
    assert valkey_pids(tmp_path / "restmq-data") == []


def test_a_named_acl_file_must_exist_the_default_may_be_missing(tmp_path, shared_broker, queue):
    message = startup_refusal(tmp_path, "--acl", str(tmp_path / "nowhere.conf"))
    assert f"acl file {tmp_path / 'nowhere.conf'} does not exist" in message

    unreadable = tmp_path / "dir.conf"
    unreadable.mkdir()
    message = startup_refusal(tmp_path, "--acl", str(unreadable))
    assert f"cannot read acl file {unreadable}" in message

    broker = shared_broker  # its working directory has no acl.conf
    assert f"access control: no {broker.workdir / 'acl.conf'}; every route is open" in broker.log()
    assert broker.post(f"/q/{queue}", value="v").status == 200


def test_the_shipped_acl_conf_is_all_open_and_documents_every_key(tmp_path, broker_factory):
    shipped = (Path(__file__).resolve().parent.parent / "acl.conf").read_text()
    rules = parse_rules(shipped, "acl.conf")
    assert not any(section.has_rules for section in rules.sections.values())
    for section in acl.SECTIONS:
        block = shipped.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        for key in acl.KEYS:
            assert f"#{key} = " in block, (section, key)
        # every example, once uncommented, is a valid rule
        uncommented = block.replace("#", "").replace(
            "scrypt$16384$8$1$PASTE-THE-OUTPUT-OF-restmq-passwd-HERE", make_hash("x")
        )
        example = parse_rules(f"[{section}]\n{uncommented}", "example")
        assert example.sections[section].has_rules
    workdir = tmp_path / "shipped"
    workdir.mkdir()
    (workdir / "acl.conf").write_text(shipped)
    broker = broker_factory(workdir=workdir)
    assert "has no rules; every route is open" in broker.log()
    assert (
        call(broker.port, "POST", "/q/open", source="127.0.0.8", form={"value": "v"}).status == 200
    )


def test_ipv6_clients_and_networks(tmp_path, queue):
    text = (
        "[rest:consumer]\nhosts_allow = ::1\nhosts_deny = all\n"
        "[rest:producer]\nhosts_allow = 127.0.0.1\nhosts_deny = ::/0\n"
    )
    broker = start_broker(tmp_path / "v6", text, "--listen", "::1")
    try:
        wait_answering(broker, host="::1")
        got = call(broker.port, "GET", f"/q/{queue}", host="::1", source="::1")
        assert got.status == 204
        refused = call(
            broker.port, "POST", f"/q/{queue}", host="::1", source="::1", form={"value": "v"}
        )
        assert refused.status == 403
        assert error_of(refused) == "access from ::1 is not allowed (rest:producer)"
    finally:
        broker.stop()


# -- the rules themselves (no broker; scrypt runs in a worker thread, as in the broker) ---


async def verdict(
    rules: AccessRules, address: str, credentials=(), section: str = "rest:consumer"
) -> int:
    """The status the rules give a client: 200 when it is let in."""
    try:
        await rules.decide_later(section, parse_address(address), list(credentials))
    except acl.Refused as refused:
        return refused.status
    return 200


async def decide(text: str, address: str, credentials=(), section: str = "rest:consumer") -> int:
    return await verdict(parse_rules(text, "test"), address, credentials, section)


@pytest.mark.parametrize(
    ("allow", "deny", "address", "expected"),
    [
        ("", "", "10.1.2.3", 200),  # no rules: open
        ("10.1.2.3", "", "10.1.2.3", 200),
        ("10.1.2.3", "", "10.1.2.4", 403),  # allow set, deny absent: only the allowed
        ("10.1.2.3", "192.168.0.", "10.9.9.9", 200),  # on neither list: let in
        ("10.1.2.3", "192.168.0.", "192.168.0.77", 403),
        ("10.1.2.3", "all", "10.1.2.3", 200),  # allowed list first
        ("10.1.2.3", "all", "10.1.2.30", 403),
        ("all", "192.168.0.", "192.168.0.1", 403),  # the original's websocket example
        ("all", "192.168.0.", "192.168.1.1", 200),
        ("", "all", "10.0.0.1", 403),
        ("10.1", "", "10.1.200.3", 200),  # a prefix is whole numbers: 10.1 is 10.1.0.0/16
        ("10.1", "", "10.10.0.1", 403),
        ("fe80:", "", "fe80::1%eth0", 200),
        ("2001:db8::/32", "", "2001:db8:0:1::5", 200),
        ("2001:db8::/32", "", "2001:db9::5", 403),
        ("10.0.0.0/8", "", "::ffff:10.2.3.4", 200),  # IPv4 seen through a dual-stack socket
        ("127.0.0.1", "all", "not an address", 403),
    ],
)
@pytest_twisted.ensureDeferred
async def test_address_rules(allow, deny, address, expected):
    text = "[rest:consumer]\n"
    if allow:
        text += f"hosts_allow = {allow}\n"
    if deny:
        text += f"hosts_deny = {deny}\n"
    assert await decide(text, address) == expected


@pytest_twisted.ensureDeferred
async def test_credentials_rules():
    for password in ("pw", make_hash("pw")):
        rules = parse_rules(f"[rest:producer]\nusername = u\npassword = {password}\n", "t")
        for credentials, expected in [
            ([], 401),
            ([("u", "pw")], 200),
            ([("u", "pw ")], 401),
            ([("U", "pw")], 401),
            ([("u", "nope"), ("u", "pw")], 200),  # Basic and cookie: either may carry it
        ]:
            try:
                await rules.decide_later("rest:producer", parse_address("1.2.3.4"), credentials)
                got = 200
            except acl.Refused as refused:
                got = refused.status
                assert refused.headers == {"WWW-Authenticate": CHALLENGE}
            assert got == expected, (credentials, expected)


def test_trusted_proxy_option_is_checked(tmp_path):
    message = startup_refusal(tmp_path, "--trusted-proxies", "10.0.0.1,proxy.example.com")
    assert "--trusted-proxies: 'proxy.example.com' is not an IP address" in message


def test_restmq_passwd_makes_salted_scrypt_hashes():
    first, second = make_hash("same secret"), make_hash("same secret")
    assert first.startswith("scrypt$16384$8$1$")
    assert first != second, "each hash has its own salt"
    for text in (first, second):
        assert passwd.parse_hash(text).matches(b"same secret")
        assert not passwd.parse_hash(text).matches(b"same secret!")
    by_argument = subprocess.run(
        [str(BIN / "restmq-passwd"), "from argv"], capture_output=True, text=True, timeout=30
    )
    assert passwd.parse_hash(by_argument.stdout.strip()).matches(b"from argv")
    empty = subprocess.run(
        [str(BIN / "restmq-passwd")], input="\n", capture_output=True, text=True, timeout=30
    )
    assert empty.returncode != 0
    assert "the password is empty" in empty.stderr
