"""The home page as a live console, in a real headless Chromium against a real broker.

The figures follow the broker without a reload, every action changes the broker
(checked over HTTP), purge asks first, the console stays free of errors, and all
of it works when acl.conf asks for a password. The storage line says what the
storage is, where, and whether it is up; the page never scrolls sideways, from a
narrow window to a wide one.
"""

from __future__ import annotations

import base64
import contextlib
import re
import textwrap

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import (
    STORAGE_MODES,
    HttpStream,
    cluster_seeds,
    redis_field,
    request,
    start_chromium,
    wait_for,
)

pytestmark = pytest.mark.needs("chromium", "chromedriver")

NONE = "\N{EN DASH}"  # what a cell shows for a figure the queue does not have
COLUMNS = ("len", "leased", "dead", "consumers", "status", "policy")


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


def open_dashboard(browser, base: str) -> WebDriverWait:
    # What an earlier page logged is not this page's: its broker may be gone (the shared
    # broker of one store stops when the tests move on to the other store).
    browser.get("about:blank")
    console_errors(browser)
    browser.get(f"{base}/static/index.html")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda b: b.find_element(By.ID, "live").text == "live", "the stream never opened")
    # A reload would drop this; every check below looks for it.
    browser.execute_script("window.sameDocument = true;")
    return wait


def not_reloaded(browser) -> bool:
    return browser.execute_script("return window.sameDocument === true;")


def row(browser, queue: str):
    found = browser.find_elements(By.CSS_SELECTOR, f'#queue-rows tr[data-queue="{queue}"]')
    return found[0] if found else None


def cells(browser, queue: str) -> dict[str, str] | None:
    tr = row(browser, queue)
    if tr is None:
        return None
    return {name: tr.find_element(By.CSS_SELECTOR, f"td.{name}").text for name in COLUMNS}


def shows(browser, queue: str, **expected: str) -> bool:
    now = cells(browser, queue)
    return now is not None and all(now[name] == value for name, value in expected.items())


def click(browser, queue: str, action: str) -> None:
    row(browser, queue).find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()


def action_result(browser) -> str:
    return browser.find_element(By.ID, "action-result").text


def text_of(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


@contextlib.contextmanager
def window_width(browser, width: int):
    """The browser's window ``width`` px wide, for the ``with`` block only."""
    before = browser.get_window_size()
    browser.set_window_size(width, 900)
    try:
        assert browser.execute_script("return window.innerWidth;") == width
        yield
    finally:
        browser.set_window_size(before["width"], before["height"])


def console_errors(browser) -> list[dict]:
    """What the page logged at error level since the last call (the log is drained)."""
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@STORAGE_MODES
def test_figures_follow_the_broker_without_a_reload(browser, shared_broker, queue):
    base = f"http://127.0.0.1:{shared_broker.port}"
    wait = open_dashboard(browser, base)
    for count in range(1, 4):
        shared_broker.post(f"/q/{queue}", value=f"m{count}")
        wait.until(lambda b, n=str(count): shows(b, queue, len=n), f"length {count}")
    assert cells(browser, queue) == {
        "len": "3", "leased": "0", "dead": NONE, "consumers": "0",
        "status": "started", "policy": "broadcast",
    }  # fmt: skip
    shared_broker.post(f"/q/{queue}:dead", value="gave up")  # its dead-letter queue appears
    wait.until(lambda b: shows(b, queue, dead="1") and shows(b, f"{queue}:dead", len="1"))
    consumer = HttpStream(shared_broker.port, queue).start()
    try:
        wait.until(lambda b: shows(b, queue, consumers="1"))
    finally:
        consumer.close()
    wait.until(lambda b: shows(b, queue, consumers="0"))
    shared_broker.post(f"/control/{queue}", status="stop")
    shared_broker.post(f"/p/{queue}", policy="roundrobin")
    wait.until(lambda b: shows(b, queue, status="stopped", policy="roundrobin"))
    assert not_reloaded(browser)
    assert console_errors(browser) == []


@STORAGE_MODES
def test_every_action_changes_the_broker(browser, shared_broker, queue):
    b = shared_broker
    b.post(f"/q/{queue}", value="first")
    b.post(f"/q/{queue}", value="second")
    wait = open_dashboard(browser, f"http://127.0.0.1:{b.port}")
    wait.until(lambda br: shows(br, queue, len="2"))

    click(browser, queue, "pop")
    wait.until(lambda br: action_result(br) == f"popped {b.key(queue, 1)}: first")
    assert b.get(f"/stats/{queue}").json()["len"] == 1
    wait.until(lambda br: shows(br, queue, len="1"))

    click(browser, queue, "status")  # started: the button stops it
    wait.until(lambda br: action_result(br) == f"stopped {queue}")
    assert b.get(f"/control/{queue}").json()["status"]["status"] == 0
    wait.until(lambda br: shows(br, queue, status="stopped"))
    click(browser, queue, "status")
    wait.until(lambda br: action_result(br) == f"started {queue}")
    assert b.get(f"/control/{queue}").json()["status"]["status"] == 1
    wait.until(lambda br: shows(br, queue, status="started"))

    click(browser, queue, "policy")
    wait.until(lambda br: action_result(br) == f"{queue} is now roundrobin")
    assert b.get(f"/p/{queue}").json()["value"] == "roundrobin"
    wait.until(lambda br: shows(br, queue, policy="roundrobin"))
    click(browser, queue, "policy")
    wait.until(lambda br: action_result(br) == f"{queue} is now broadcast")
    assert b.get(f"/p/{queue}").json()["value"] == "broadcast"

    # purge asks first; Cancel keeps the messages
    dialog = browser.find_element(By.ID, "purge-dialog")
    click(browser, queue, "purge")
    wait.until(lambda br: dialog.is_displayed())
    assert browser.find_element(By.ID, "purge-queue").text == queue
    assert browser.find_element(By.ID, "purge-count").text == "1"
    browser.find_element(By.ID, "purge-cancel").click()
    wait.until(lambda br: not dialog.is_displayed())
    wait.until(lambda br: action_result(br) == f"purge of {queue} cancelled")
    assert b.get(f"/stats/{queue}").json()["len"] == 1
    click(browser, queue, "purge")
    wait.until(lambda br: dialog.is_displayed())
    browser.find_element(By.ID, "purge-confirm").click()
    wait.until(lambda br: action_result(br) == f"purged {queue}")
    assert b.get(f"/stats/{queue}").json()["len"] == 0
    wait.until(lambda br: shows(br, queue, len="0"))

    # pop on the empty queue says so
    click(browser, queue, "pop")
    wait.until(lambda br: action_result(br) == f"queue {queue} is empty")

    # the post form
    field = browser.find_element(By.ID, "post-queue")
    field.clear()
    field.send_keys(queue)
    browser.find_element(By.ID, "post-value").clear()
    browser.find_element(By.ID, "post-value").send_keys("from the dashboard")
    browser.find_element(By.ID, "post-send").click()
    wait.until(lambda br: browser.find_element(By.ID, "post-result").text.startswith("stored"))
    key = browser.find_element(By.ID, "post-result").text.removeprefix("stored as ")
    wait.until(lambda br: shows(br, queue, len="1"))
    assert not_reloaded(browser)
    assert console_errors(browser) == []

    # the watch page, from the row's link: a live consumer that takes the message
    row(browser, queue).find_element(By.CSS_SELECTOR, "a.route-watch").click()
    wait.until(lambda br: br.find_element(By.ID, "queue-name").text == queue)
    wait.until(lambda br: br.find_element(By.ID, "state").text == "open")
    wait.until(lambda br: br.find_elements(By.CSS_SELECTOR, f'#messages li[data-key="{key}"]'))
    assert b.get(f"/stats/{queue}").json()["len"] == 0
    assert console_errors(browser) == []


ACL = """\
[rest:producer]
username = operator
password = {password}

[rest:consumer]
username = operator
password = {password}
"""


def test_dashboard_works_when_acl_conf_asks_for_a_password(broker_factory, tmp_path, queue):
    password = "s3cret dashboard"
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL.format(password=password))
    broker = broker_factory("--acl", str(acl), wait=False)
    token = base64.b64encode(f"operator:{password}".encode()).decode()
    auth = {"Authorization": f"Basic {token}"}

    def call(method: str, path: str, **kwargs):
        return request(broker.port, method, path, headers=auth, **kwargs)

    wait_for(lambda: _answers(broker.port, auth), 20, what="the guarded broker")
    # the stream is a consumer route: no password, no figures
    refused = request(broker.port, "GET", "/stats/", headers={"Accept": "text/event-stream"})
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="RestMQ Restricted Access"'
    call("POST", f"/q/{queue}", form={"value": "one"})

    driver = start_chromium()  # its own, so that no other test inherits the credentials
    try:
        driver.get(f"http://operator:{password.replace(' ', '%20')}@127.0.0.1:{broker.port}/")
        wait = WebDriverWait(driver, 15)
        wait.until(lambda b: b.find_element(By.ID, "live").text == "live", "no stream")
        driver.execute_script("window.sameDocument = true;")
        wait.until(lambda b: shows(b, queue, len="1"))
        call("POST", f"/q/{queue}", form={"value": "two"})
        wait.until(lambda b: shows(b, queue, len="2"))
        click(driver, queue, "pop")
        wait.until(lambda b: action_result(b) == f"popped {queue}:1: one")
        click(driver, queue, "status")
        wait.until(lambda b: action_result(b) == f"stopped {queue}")
        assert call("GET", f"/control/{queue}").json()["status"]["status"] == 0
        wait.until(lambda b: shows(b, queue, len="1", status="stopped"))
        assert not_reloaded(driver)
        errors = console_errors(driver)
        assert errors == [], textwrap.indent("\n".join(e["message"] for e in errors), "  ")
    finally:
        driver.quit()


def _answers(port: int, auth: dict) -> bool:
    try:
        return request(port, "GET", "/stats/", headers=auth, timeout=2).status == 200
    except OSError:
        return False


# -- the storage line -----------------------------------------------------------------


@STORAGE_MODES
def test_the_storage_line_says_what_the_storage_is_and_that_it_is_up(browser, shared_broker):
    wait = open_dashboard(browser, f"http://127.0.0.1:{shared_broker.port}")
    wait.until(lambda b: text_of(b, "storage-state") == "up", "the storage never showed up")
    if shared_broker.clustered:
        kind = "Valkey Cluster"
        address = ",".join(f"{host}:{port}" for host, port in cluster_seeds(shared_broker))
    else:
        kind = "embedded Valkey"
        address = f"unix:{(shared_broker.data_dir / 'valkey.sock').resolve()}"
    assert text_of(browser, "storage-kind") == kind
    assert text_of(browser, "storage-address") == address
    connections = re.fullmatch(r"(\d+) connections?", text_of(browser, "storage-connections"))
    assert connections and int(connections.group(1)) > 0
    # /stats/ keeps the original's text; the page shows none of it
    assert redis_field(shared_broker).fullmatch(shared_broker.get("/stats/").json()["redis"])
    assert "<Redis" not in text_of(browser, "summary")
    assert console_errors(browser) == []


def test_the_storage_line_names_an_external_redis_and_says_when_it_is_down(
    browser, broker_factory, valkey_factory
):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port))
    wait = open_dashboard(browser, f"http://127.0.0.1:{broker.port}")
    wait.until(lambda b: text_of(b, "storage-state") == "up", "the storage never showed up")
    assert text_of(browser, "storage-kind") == "Redis"
    assert text_of(browser, "storage-address") == f"127.0.0.1:{server.port}"
    server.stop()
    wait.until(lambda b: text_of(b, "storage-state") == "down", "the outage never showed")
    assert text_of(browser, "live") == "storage unavailable"
    assert not_reloaded(browser)


# -- the layout ------------------------------------------------------------------------


def scrolls_sideways(browser) -> bool:
    return browser.execute_script(
        "const page = document.documentElement; return page.scrollWidth > page.clientWidth;"
    )


def inside_the_page(browser, element) -> bool:
    return browser.execute_script(
        "const box = arguments[0].getBoundingClientRect();"
        "return box.width > 0 && box.left >= 0"
        " && box.right <= document.documentElement.clientWidth;",
        element,
    )


@pytest.mark.parametrize("width", [1280, 1920, 800])
def test_the_page_fits_its_width_without_scrolling_sideways(browser, shared_broker, queue, width):
    # the longest name a queue can have, without a separator to break it at
    long_name = (queue + "x" * 200)[:200]
    for name in (queue, f"{queue}:dead", long_name):
        shared_broker.post(f"/q/{name}", value="x")
    with window_width(browser, width):
        wait = open_dashboard(browser, f"http://127.0.0.1:{shared_broker.port}")
        wait.until(lambda b: all(row(b, name) for name in (queue, f"{queue}:dead", long_name)))
        wait.until(lambda b: text_of(b, "storage-state") == "up")
        assert not scrolls_sideways(browser)
        for name in (queue, long_name):
            links = row(browser, name).find_elements(By.CSS_SELECTOR, "td.routes a")
            assert [a.text for a in links] == [
                "/q",
                "/c",
                "/p",
                "/control",
                "/stats",
                "/j",
                "watch",
            ]
            assert all(inside_the_page(browser, a) for a in links), name
            buttons = row(browser, name).find_elements(By.CSS_SELECTOR, "td.actions button")
            assert all(inside_the_page(browser, button) for button in buttons), name
        heading = browser.find_element(By.CSS_SELECTOR, "#queues thead th:last-child")
        if width >= 1280:  # a table, its routes column in full view
            assert heading.text == "ROUTES" and inside_the_page(browser, heading)
        else:  # a card per queue, each figure under its column's title
            assert not heading.is_displayed()
    assert console_errors(browser) == []
