"""Leased streams in a real browser: the watch page's EventSource acks with fetch
(DELETE /q/<queue>?receipt=R), its WebSocket with {"ack": R} frames."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import start_chromium

# Debian's chromium and chromium-driver; `make test` installs them when run as root.
pytestmark = pytest.mark.needs("chromium", "chromedriver")


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


def text_of(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def received_keys(browser) -> list[str]:
    return [
        item.get_attribute("data-key")
        for item in browser.find_elements(By.CSS_SELECTOR, "#messages li")
    ]


def open_watch(browser, broker, queue: str, transport: str, query: str) -> WebDriverWait:
    browser.get(
        f"http://127.0.0.1:{broker.port}/static/watch.html?queue={queue}"
        f"&transport={transport}{query}"
    )
    wait = WebDriverWait(browser, 15)
    wait.until(lambda b: text_of(b, "state") == "open", "stream never opened")
    wait.until(lambda b: broker.get(f"/stats/{queue}").json()["consumers"] == 1)
    return wait


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_the_watch_page_acks_every_message_of_a_leased_stream(
    browser, shared_broker, queue, transport
):
    wait = open_watch(browser, shared_broker, queue, transport, "&lease=30&prefetch=2")
    keys = [shared_broker.post(f"/q/{queue}", value=f"m{i}").text.strip() for i in range(7)]
    # seven messages through a window of two: only acks let the rest through
    wait.until(lambda b: received_keys(b) == keys, "not every message arrived")
    wait.until(lambda b: text_of(b, "acked") == "7" and text_of(b, "unacked") == "0")
    wait.until(lambda b: shared_broker.redis("ZCARD", f"{queue}:leased") == 0)
    assert all(shared_broker.redis("EXISTS", key) == 0 for key in keys)  # acked: deleted
    assert text_of(browser, "ack-error") == ""
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: shared_broker.get(f"/stats/{queue}").json()["consumers"] == 0)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_acking_by_hand_opens_the_window_and_stop_gives_the_rest_back(
    browser, shared_broker, queue, transport
):
    wait = open_watch(browser, shared_broker, queue, transport, "&lease=30&prefetch=2&ack=0")
    keys = [shared_broker.post(f"/q/{queue}", value=f"m{i}").text.strip() for i in range(4)]
    wait.until(lambda b: received_keys(b) == keys[:2])
    assert text_of(browser, "unacked") == "2"
    browser.find_element(By.CSS_SELECTOR, f'#messages li[data-key="{keys[0]}"] button.ack').click()
    wait.until(lambda b: received_keys(b) == keys[:3], "the ack did not open the window")
    assert text_of(browser, "acked") == "1"
    browser.find_element(By.ID, "stop").click()
    # the two unacknowledged messages are back at the head, before the one never sent
    wait.until(lambda b: shared_broker.redis("ZCARD", f"{queue}:leased") == 0)
    waiting = list(reversed(shared_broker.redis("LRANGE", f"{queue}:queue", 0, -1)))
    assert waiting == keys[1:]
