"""The playground page in a real browser: headless Chromium driven by selenium against a real server.

.ci/run installs Debian's chromium and chromium-driver and sets AWQINFER_CI=1, so in CI this
test runs or fails; elsewhere it is skipped when no browser is installed.
"""

from __future__ import annotations

import pytest
import requests

from serving import LONG_TOKENS, Server, make_long_model, metric, require_tool, wait_for

SYSTEM = "You are a friendly assistant"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_qwen2):
    root = tmp_path_factory.mktemp("served")
    (root / "tiny-qwen2").symlink_to(tiny_qwen2)
    make_long_model(root / "long-qwen2")
    with Server("--model", "tiny-qwen2", "--model", "long-qwen2", "--no-access-log", cwd=root) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = require_tool("chromium", "chromium-browser", install="apt-get install chromium")
    driver_path = require_tool("chromedriver", install="apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _fill(browser, field_id: str, value) -> None:
    from selenium.webdriver.common.by import By

    element = browser.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(str(value))


ENDS = ("done", "error", "stopped")  # the states a reply ends in


def _send(browser, prompt: str, timeout: float, until=ENDS) -> None:
    from selenium.webdriver.common.by import By

    _fill(browser, "prompt", prompt)
    browser.find_element(By.ID, "send").click()

    def reached():
        state = browser.find_element(By.ID, "stats").get_attribute("data-state")
        return state if state in ENDS + until else None

    state = wait_for(reached, timeout, f"the page to reach {until}")
    assert state in until, f"the page reached {state!r}, not {until}: " + browser.find_element(By.ID, "error").text


def test_type_a_prompt_press_send_and_watch_it_stream(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait_for(lambda: "tiny-qwen2" in browser.find_element(By.ID, "model").get_attribute("textContent"), 30,
             "the model list")
    fields = [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "#fields input")]
    assert fields == ["f-max_tokens", "f-temperature", "f-top_p", "f-top_k", "f-seed", "f-repetition_penalty",
                      "f-frequency_penalty", "f-presence_penalty"]  # every sampling field of the schema
    assert browser.find_element(By.ID, "f-temperature").get_attribute("max") == "5"
    _fill(browser, "f-max_tokens", 40)
    _fill(browser, "f-temperature", 0.9)
    _fill(browser, "f-seed", 5)
    _send(browser, "Tell me a story", 120)
    stats = browser.find_element(By.ID, "stats")
    assert stats.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
    assert int(stats.get_attribute("data-chunks")) > 1  # the reply arrived in pieces, shown as they came
    assert "40 tokens" in stats.text and "tokens/s" in stats.text
    shown = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant span")[-1].get_attribute("textContent")
    same = requests.post(server.url + "/ai/run/tiny-qwen2", json={
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me a story"}],
        "max_tokens": 40, "temperature": 0.9, "seed": 5}).json()["result"]["response"]
    assert shown == same  # the page shows exactly what the API answers for the same seed
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def test_stop_cancels_the_generation_and_bad_values_show_the_servers_error(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    browser.get(server.url + "/")
    wait_for(lambda: "long-qwen2" in browser.find_element(By.ID, "model").get_attribute("textContent"), 30,
             "the model list")
    Select(browser.find_element(By.ID, "model")).select_by_value("long-qwen2")
    cancelled = metric(server.url, 'awqinfer_generations_total{outcome="cancelled"}')
    _fill(browser, "f-max_tokens", LONG_TOKENS)  # Stop comes long before the end
    _fill(browser, "f-temperature", 0)
    _send(browser, "Tell me a story", 180, until=("streaming",))  # its first use loads the model
    wait_for(lambda: int(browser.find_element(By.ID, "stats").get_attribute("data-chunks")) > 200, 60,
             "a reply longer than a line")
    # The tiny model's reply has no spaces to break at: it wraps in its column, the page stays as wide as the window
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: browser.find_element(By.ID, "stats").get_attribute("data-state") == "stopped", 30, "stopped")
    wait_for(lambda: metric(server.url, 'awqinfer_generations_total{outcome="cancelled"}') == cancelled + 1, 30,
             "the server to cancel the generation")
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    browser.find_element(By.ID, "clear").click()
    _fill(browser, "f-temperature", 9)
    _send(browser, "Hello", 60)
    assert "temperature: got 9" in browser.find_element(By.ID, "error").text
