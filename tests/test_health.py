"""``GET /health``: 200 while Redis answers, 503 while it does not; never behind acl.conf."""

from __future__ import annotations

from restmq import __version__
from tests.support import STORAGE_MODES, basic, wait_for, wait_healthy


@STORAGE_MODES
def test_a_broker_with_storage_is_healthy(shared_broker):
    answer = shared_broker.get("/health")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["cache-control"] == "no-store"
    assert answer.json() == {
        "status": "ok",
        "storage": "up",
        "version": __version__,
        "pid": shared_broker.proc.pid,  # the process that answered (--workers)
    }
    # probes that only look at the status line may use HEAD
    head = shared_broker.request("HEAD", "/health")
    assert (head.status, head.body) == (200, b"")


def test_health_is_503_while_redis_is_gone_and_200_once_it_is_back(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port))
    assert broker.get("/health").status == 200
    server.stop()
    wait_for(lambda: broker.get("/health").status == 503, timeout=10, what="the outage")
    answer = broker.get("/health")
    body = answer.json()
    assert body["status"] == "unavailable"
    assert body["storage"] == "down"
    assert body["version"] == __version__
    assert body["error"].startswith("storage unavailable")
    assert answer.headers["retry-after"] == "1"
    server.start()
    wait_for(lambda: broker.get("/health").status == 200, timeout=15, what="recovery")
    assert broker.get("/health").json()["storage"] == "up"
    assert "Traceback" not in broker.log()


GUARDED_ACL = """\
[rest:producer]
username = admin
password = s3cret

[rest:consumer]
hosts_allow = 127.0.0.2
hosts_deny = all
username = admin
password = s3cret
"""


def test_health_needs_no_credentials_whatever_acl_conf_asks(broker_factory, tmp_path):
    (tmp_path / "acl.conf").write_text(GUARDED_ACL)
    broker = broker_factory(workdir=tmp_path, wait=False)
    wait_healthy(broker)
    # every other route refuses this client: wrong address, and no password
    assert broker.get("/stats/").status == 403
    assert broker.get("/stats/", headers=basic("admin", "s3cret")).status == 403
    answer = broker.get("/health")
    assert answer.status == 200
    assert answer.json()["status"] == "ok"
