"""A real browser as a consumer: EventSource and WebSocket in headless Chromium."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import STORAGE_MODES, HttpStream, start_chromium

# Debian's chromium and chromium-driver; `make test` installs them when run as root.
pytestmark = pytest.mark.needs("chromium", "chromedriver")


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


def received(browser) -> list[tuple[str, str]]:
    items = browser.find_elements(By.CSS_SELECTOR, "#messages li")
    return [
        (item.get_attribute("data-key"), item.find_element(By.CLASS_NAME, "value").text)
        for item in items
    ]


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_browser_consumer_receives_messages_as_they_arrive(
    browser, shared_broker, queue, transport
):
    browser.get(
        f"http://127.0.0.1:{shared_broker.port}/static/watch.html?queue={queue}"
        f"&transport={transport}"
    )
    wait = WebDriverWait(browser, 15)
    wait.until(lambda b: b.find_element(By.ID, "state").text == "open", "stream never opened")
    wait.until(lambda b: shared_broker.get(f"/stats/{queue}").json()["consumers"] == 1)
    sent = []
    for value in ["plain", "caf\u00e9 \U0001f680", "<b>not markup</b>", 'quote " and \\']:
        key = shared_broker.post(f"/q/{queue}", value=value).text.strip()
        sent.append((key, value))
    wait.until(lambda b: len(received(b)) == len(sent))
    assert received(browser) == sent
    assert browser.find_element(By.ID, "count").text == str(len(sent))
    # the queue is drained: the browser took the messages
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: shared_broker.get(f"/stats/{queue}").json()["consumers"] == 0)
    assert browser.find_element(By.ID, "state").text == "stopped"


@STORAGE_MODES
def test_dashboard_lists_queues_with_their_state_and_posts(browser, shared_broker, queue):
    for i in range(3):
        shared_broker.post(f"/q/{queue}", value=f"m{i}")
    shared_broker.post(f"/p/{queue}", policy="roundrobin")
    shared_broker.post(f"/control/{queue}", status="stop")
    consumer = HttpStream(shared_broker.port, queue).start()
    browser.get(f"http://127.0.0.1:{shared_broker.port}/static/index.html")
    wait = WebDriverWait(browser, 15)
    row = f'#queue-rows tr[data-queue="{queue}"]'

    def cells(b):
        found = b.find_elements(By.CSS_SELECTOR, row)
        if not found:
            return None
        tr = found[0]
        return {
            name: tr.find_element(By.CSS_SELECTOR, f"td.{name}").text
            for name in ("len", "status", "policy", "consumers")
        }

    wait.until(lambda b: cells(b) is not None and cells(b)["consumers"] == "1")
    assert cells(browser) == {
        "len": "3",
        "status": "stopped",
        "policy": "roundrobin",
        "consumers": "1",
    }
    links = {
        a.get_attribute("class"): a.get_attribute("href")
        for a in browser.find_elements(By.CSS_SELECTOR, f"{row} td.routes a")
    }
    base = f"http://127.0.0.1:{shared_broker.port}"
    assert links["route-q"] == f"{base}/q/{queue}"
    assert links["route-c"] == f"{base}/c/{queue}"
    assert links["route-watch"] == f"{base}/static/watch.html?queue={queue}"
    # the post form adds a message; the table follows
    field = browser.find_element(By.ID, "post-queue")
    field.clear()
    field.send_keys(queue)
    value = browser.find_element(By.ID, "post-value")
    value.clear()
    value.send_keys("from the dashboard")
    browser.find_element(By.ID, "post-send").click()
    stored_as = f"stored as {shared_broker.key(queue, 4)}"
    wait.until(lambda b: b.find_element(By.ID, "post-result").text == stored_as)
    wait.until(lambda b: cells(b)["len"] == "4")
    consumer.close()
