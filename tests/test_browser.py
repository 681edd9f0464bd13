"""A real browser as a consumer: EventSource and WebSocket in headless Chromium."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import start_chromium


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
