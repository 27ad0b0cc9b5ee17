"""The fleet dashboard in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by Selenium), against a real manager, mosquitto and simulated devices.

Without a browser the test is skipped, unless ``EDGECLOUD_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs one) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.fleet.api import create_server
from edgecloud.fleet.rollout import FixedBatches, RolloutStatus
from edgecloud.shared.fleetlink.quality import FieldQuality
from tests.helpers.sim_fleet import (
    make_archive,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
    wait_status,
)
from tests.helpers.waiting import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
API_KEY = "dashboard-key"


def _unavailable(reason: str) -> None:
    if os.environ.get("EDGECLOUD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and EDGECLOUD_REQUIRE_BROWSER=1 (apt-get install chromium chromium-driver)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    if CHROMIUM is None or CHROMEDRIVER is None:
        _unavailable("chromium or chromedriver is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # what a closed network needs: no background calls home, no sandbox as root in CI
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def rows(driver: Any, tbody: str) -> dict[str, Any]:
    """The rows of ``#tbody`` by their first cell's text."""
    from selenium.webdriver.common.by import By

    found = {}
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{tbody} tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        if cells:
            found[cells[0].text] = row
    return found


def cells(row: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.text for c in row.find_elements(By.TAG_NAME, "td")]


def see(driver: Any, predicate: Any, what: str, timeout: float = 20) -> Any:
    """Wait until the page (which polls every 3 s) shows something; stale rows are retried."""
    from selenium.common.exceptions import StaleElementReferenceException

    def check() -> Any:
        try:
            return predicate()
        except (StaleElementReferenceException, KeyError, IndexError):
            return None

    return wait_for(check, timeout, f"the dashboard to show {what}")


def test_dashboard_shows_the_fleet_and_drives_rollouts(browser, mqtt_broker, tmp_path, sims, managers) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    labels = {0: {"site": "<b>lab</b>"}, 1: {"site": "lab"}, 2: {"site": "lab"}}
    devices = start_devices(mqtt_broker, sims, 3, delay_s=1.5, fail={"dev02"}, labels=labels.__getitem__)
    devices[1].escalation_rate = 0.25
    devices[0].field[1] = FieldQuality(
        "edge-student", 1, read=200, kept=180, escalated=20, checks=40, agreed=36, shed=2
    )
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 3)
    for device in devices:
        device.send_telemetry()
    server, port = create_server(manager, api_key=API_KEY)
    try:
        v2 = manager.register_bundle(make_archive(tmp_path, 2))
        first = manager.create_rollout(
            v2.name,
            v2.version,
            devices=["dev00", "dev01", "dev02"],
            strategy=FixedBatches(3),
            device_timeout_s=60,
            rollout_id="first",
        )
        wait_status(manager, first.id, RolloutStatus.COMPLETED)

        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.title == "edgecloud fleet"
        see(browser, lambda: "API key" in browser.find_element(By.ID, "err").text, "the missing-key error")

        key = browser.find_element(By.ID, "key")
        key.send_keys(API_KEY, Keys.TAB)  # change event: stored for the tab, then a refresh
        see(browser, lambda: len(rows(browser, "devices")) == 3, "three devices")
        assert browser.find_element(By.ID, "err").text == ""

        see(browser, lambda: "25.0%" in cells(rows(browser, "devices")["dev01"]), "dev01's escalation rate")
        # read inside see(): the page re-renders every 3 s, and a row read across a refresh is stale
        dev00, dev01, dev02 = see(
            browser,
            lambda: [cells(rows(browser, "devices")[d]) for d in ("dev00", "dev01", "dev02")],
            "the devices' rows",
        )
        assert dev00[1] == "online" and dev00[2] == "edge-student v2" and dev00[4] == "10.0%"
        assert dev00[3] == "site=<b>lab</b>"  # shown as text, not markup
        assert browser.find_elements(By.CSS_SELECTOR, "#devices b") == []
        assert dev01[2] == "edge-student v2" and dev02[2] == "edge-student v1"  # dev02 failed the update

        see(browser, lambda: "edge-student v1" in rows(browser, "quality"), "the field quality of v1")
        quality = see(browser, lambda: cells(rows(browser, "quality")["edge-student v1"]), "v1's quality row")
        assert quality[1:3] == ["1", "200"] and quality[4] == "40 (2)"
        assert quality[3].startswith("90.0% (") and quality[5].startswith("10.0% (")  # with their intervals
        interval = rows(browser, "quality")["edge-student v1"].find_element(By.CSS_SELECTOR, ".ci > span")
        assert 0 < float(interval.value_of_css_property("width").removesuffix("px")) < 160  # drawn, not full

        row = cells(rows(browser, "rollouts")["first"])
        assert row[1] == "edge-student v2" and row[3] == "COMPLETED" and row[4] == "100%"
        assert row[5] == "1/1" and row[6] == "2 / 1 / 3"
        bar = rows(browser, "rollouts")["first"].find_element(By.CSS_SELECTOR, ".bar > span")
        assert "bad" in bar.get_attribute("class")  # a failure colours the bar

        # a second rollout, one device per wave, driven from the page's buttons
        v3 = manager.register_bundle(make_archive(tmp_path, 3))
        devices[0].delay_s = 8.0  # wave 1 outlasts the page's next poll, so the pause lands before wave 2
        second = manager.create_rollout(
            v3.name,
            v3.version,
            devices=["dev00", "dev01"],
            strategy=FixedBatches(1),
            device_timeout_s=60,
            rollout_id="second",
        )
        see(browser, lambda: "second" in rows(browser, "rollouts"), "the second rollout")
        rows(browser, "rollouts")["second"].find_element(By.CSS_SELECTOR, "button[data-op=pause]").click()
        wait_status(manager, second.id, RolloutStatus.PAUSED, timeout=10)
        see(browser, lambda: cells(rows(browser, "rollouts")["second"])[3] == "PAUSED", "the pause")
        see(browser, lambda: cells(rows(browser, "devices")["dev00"])[6] == "second: ACTIVE", "dev00 in the rollout")
        assert manager.get_rollout(second.id).devices["dev01"].deploy.status.value == "QUEUED"

        rows(browser, "rollouts")["second"].find_element(By.CSS_SELECTOR, "button[data-op=resume]").click()
        wait_status(manager, second.id, RolloutStatus.COMPLETED)
        see(
            browser,
            lambda: cells(rows(browser, "rollouts")["second"])[3:7] == ["COMPLETED", "100%", "2/2", "2 / 0 / 2"],
            "the second rollout completed",
        )
        assert list(rows(browser, "rollouts")) == ["second", "first"]  # newest first

        # an operator error comes back as the API's message
        rows(browser, "rollouts")["second"].find_element(By.CSS_SELECTOR, "button[data-op=pause]").click()
        see(
            browser,
            lambda: "only a RUNNING one can pause" in browser.find_element(By.ID, "err").text,
            "the refused pause",
        )

        # a device that drops off (no DISCONNECT: the broker publishes its will) shows offline
        devices[1].client.loop_stop()
        devices[1].client.socket().close()
        see(browser, lambda: cells(rows(browser, "devices")["dev01"])[1] == "offline", "dev01 offline")

        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        server.stop()
