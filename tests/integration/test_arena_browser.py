"""A full arena session in Debian's headless Chromium (selenium + chromedriver): log in, start a
session, see the runs reported by the evaluator client, vote, see the reveal and the leaderboard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from robot_learning.arena.services import ArenaSettings
from tests.integration.conftest import headless_chromium
from tests.integration.test_arena_api import LiveArena, setup_pair

pytestmark = pytest.mark.integration


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium with a fresh profile."""
    driver = headless_chromium(tmp_path)
    yield driver
    driver.quit()


def _submit(b, element_id: str) -> None:  # noqa: ANN001
    """Click a button that submits a server-rendered form and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = b.find_element(By.TAG_NAME, "html")
    b.find_element(By.ID, element_id).click()
    WebDriverWait(b, 30).until(expected_conditions.staleness_of(old))  # a loaded machine renders slowly


def test_login_vote_leaderboard_without_identity_leaks(browser, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    arena = LiveArena(ArenaSettings(db_url=f"sqlite:///{tmp_path}/arena.db", health_check=False, n_boot=20, seed=1))
    try:
        setup_pair(arena, ["ws://127.0.0.1:9/hidden-a", "ws://127.0.0.1:9/hidden-b"])
        token = arena.evaluator("ann")
        b = browser
        b.implicitly_wait(10)  # elements of a page still loading
        b.get(f"{arena.url}/ui/login")
        b.find_element(By.ID, "token").send_keys(token)
        _submit(b, "login")
        assert "signed in as ann" in b.find_element(By.ID, "me").text
        b.find_element(By.ID, "task").clear()
        b.find_element(By.ID, "task").send_keys("lift")
        b.find_element(By.ID, "instruction").send_keys("lift the red cube")
        _submit(b, "start")
        assert b.find_element(By.ID, "instruction").text == "lift the red cube"
        sid = b.current_url.rsplit("/", 1)[-1]
        # the evaluator client reports both runs through the API; the page shows their status
        with httpx.Client(base_url=arena.url, headers={"Authorization": f"Bearer {token}"}) as api:
            for slot, ok in (("A", True), ("B", False)):
                r = api.post(f"/api/sessions/{sid}/episodes", json={"slot": slot, "success": ok, "steps": 40, "seed": 3})
                assert r.status_code == 200
        b.refresh()
        assert "done" in b.find_element(By.ID, "run-A").text and "yes" in b.find_element(By.ID, "run-A").text
        pages_before = [b.page_source]
        # (the public leaderboard lists policy names by design; nothing links them to this session)
        for path in ("/ui/evaluate", f"/ui/sessions/{sid}"):
            b.get(arena.url + path)
            pages_before.append(b.page_source)
        for html in pages_before:
            assert "secret-policy" not in html and "hidden-a" not in html and "hidden-b" not in html
        b.find_element(By.ID, "progress_a").clear()
        b.find_element(By.ID, "progress_a").send_keys("90")
        b.find_element(By.ID, "progress_b").clear()
        b.find_element(By.ID, "progress_b").send_keys("30")
        b.find_element(By.ID, "outcome-A").click()
        _submit(b, "submit-vote")
        assert b.find_element(By.ID, "state").text == "voted"
        winner = b.find_element(By.ID, "reveal-A").text
        assert {winner, b.find_element(By.ID, "reveal-B").text} == {"secret-policy-0", "secret-policy-1"}
        b.get(f"{arena.url}/ui/leaderboard")
        assert b.find_element(By.ID, "n-votes").text == "1"
        table = b.find_element(By.ID, "board").text
        assert "secret-policy-0" in table and "secret-policy-1" in table
        rows = b.find_elements(By.CSS_SELECTOR, "#board tr")[1:]
        assert rows[0].text.split()[:2] == ["1", winner]  # the voted-for policy is ranked first
        img = b.find_element(By.CSS_SELECTOR, "img")
        assert b.execute_script("return arguments[0].naturalWidth", img) > 0  # the CI plot rendered
    finally:
        arena.stop()
