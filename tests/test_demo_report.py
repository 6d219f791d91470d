"""The demo's report page: what a person opens at the end of `make demo`, checked in real Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import LAUNCH, playwright
from ratingloop.demo_report import DemoData, write_report


def data() -> DemoData:
    score = {"answers": 36, "hidden_mean": -0.21, "ci_low": -0.35, "ci_high": -0.07, "ratings": 30}
    better = {"answers": 36, "hidden_mean": 0.34, "ci_low": 0.2, "ci_high": 0.48, "ratings": 28}
    return DemoData(
        phases=[{"label": "before any round", "versions": {"base": score}},
                {"label": "after round 1", "versions": {"01VERSIONA": better}},
                {"label": "after round 2", "versions": {"01VERSIONA": better}}],
        rounds=[{"round": 1, "outcome": "promoted", "version_id": "01VERSIONA", "reasons": [], "win_rate": 0.71,
                 "ci_low": 0.6, "ci_high": 0.8, "n_prompts": 24, "seconds": 130},
                {"round": 2, "outcome": "rejected", "version_id": "01VERSIONB", "win_rate": 0.52, "ci_low": 0.4,
                 "ci_high": 0.63, "n_prompts": 24, "seconds": 120,
                 "reasons": ["win rate CI [0.40, 0.63] does not clear 0.5 + margin <script>"]}],
        live={"base": {"n": 30, "mean": -0.1, "ci_low": -0.3, "ci_high": 0.1},
              "01VERSIONA": {"n": 28, "mean": 0.3, "ci_low": 0.1, "ci_high": 0.5}},
        flags=[{"group": "honest history askers", "n": 34, "flagged": 1},
               {"group": "inverting askers", "n": 6, "flagged": 4}, {"group": "chat flood", "n": 1, "flagged": 1}],
        minutes=9.5, setup="a test")


def test_the_report_has_its_plots_and_says_why_a_round_was_rejected(tmp_path: Path) -> None:
    path = write_report(tmp_path / "demo", data())
    text = path.read_text()
    assert text.count("<svg") == 3 and "&lt;script&gt;" in text and "<script>" not in text
    assert "01VERSIONA" in text and "-0.210" in text and "+0.340" in text


@pytest.mark.slow
def test_the_report_opens_in_a_browser_with_every_plot(tmp_path: Path) -> None:
    sync_playwright = playwright()
    path = write_report(tmp_path / "demo", data())
    with sync_playwright() as p:
        browser = p.chromium.launch(**LAUNCH)
        try:
            page = browser.new_page()
            page.goto(path.as_uri())
            for section in ("hidden", "live", "flags"):
                box = page.locator(f"#{section} svg").bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 100, section
            rows = page.locator("#rounds tr")
            assert rows.count() == 3
            assert "rejected" in rows.nth(2).inner_text() and "does not clear" in rows.nth(2).inner_text()
            assert "01VERSIONA" in page.locator("#hidden").inner_text()
        finally:
            browser.close()
