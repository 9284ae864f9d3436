"""Issue 15: the Lab tab in Chromium: design a tiny model, train it from the page, see its curve and
evaluation, and find it in Explore's model list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_browser import CHROMIUM, assert_no_console_errors, chromium_page, open_tab, read_plot, screenshot, wait_until

from archplay.app import lab
from archplay.models.training import recipe as recipes

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]

TINY = {"layers": 1, "width": 32, "heads": 2, "kv_heads": 2, "context": 64, "steps": 6, "batch": 2}


@pytest.fixture(scope="module")
def lab_page(tmp_path_factory):
    from conftest import app_server

    runs = tmp_path_factory.mktemp("lab-runs")
    with app_server(tmp_path_factory.mktemp("server"), "--lab-stories", "40", "--lab-dir", str(runs)) as url:
        with chromium_page(url) as pg:
            yield pg, runs


def choose(page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option").filter(has_text=re.compile(rf"^\W*{re.escape(label)}")).first.click()


def test_design_train_and_find_a_model_in_the_page(lab_page):
    page, runs = lab_page
    page.set_viewport_size({"width": 1280, "height": 800})
    open_tab(page, "Lab")
    choose(page, "lab-start", "blank decoder-only")
    wait_until(page, lambda: page.locator("#lab-positions input").input_value() == "rope", "the blank recipe")
    for key, value in TINY.items():
        box = page.locator(f"#lab-{key} input[type=number]")
        box.fill(str(value))
        box.blur()
    choose(page, "lab-positions", "alibi")
    expected = recipes.parameter_count(lab.recipe_from("decoder", {**lab.start_values("blank:decoder")[1], **TINY,
                                                                    "positions": "alibi"}))  # fmt: skip
    wait_until(page, lambda: f"{expected['total']:,} parameters" in page.locator("#lab-summary").inner_text(),
               "the parameter count of the tiny recipe", show=lambda: page.locator("#lab-summary").inner_text())  # fmt: skip
    page.locator("#lab-name textarea, #lab-name input").first.fill("<b>tiny</b>")
    page.locator("#lab-train").click()
    wait_until(page, lambda: "Trained" in page.locator("#lab-status").inner_text(), "the run to end", timeout=180,
               show=lambda: page.locator("#lab-status").inner_text() + " | " + page.locator("#lab-progress").inner_text())  # fmt: skip
    assert "step 6 of 6" in page.locator("#lab-progress").inner_text()
    curve = read_plot(page, "lab-curve")
    ours = [t for t in curve["data"] if t["name"] and "tiny" in t["name"] and "(each step)" in t["name"]]
    assert ours and len(ours[0]["y"]) == 6, [t["name"] for t in curve["data"]]
    assert any(t["name"] == "built-in gpt" for t in curve["data"])  # the built-in's own curve beside it
    evaluation = page.locator("#lab-evaluation").inner_text()
    assert "entropy floor" in evaluation and "<b>" not in evaluation  # the name stays text
    screenshot(page, "lab")
    if shots := __import__("os").environ.get("ARCHPLAY_LAB_SHOTS"):  # a look at both sizes, for a person
        for w, h in ((1024, 768), (1280, 800)):
            page.set_viewport_size({"width": w, "height": h})
            page.wait_for_timeout(500)
            page.screenshot(path=f"{shots}/lab-{w}.png", full_page=False)
            page.screenshot(path=f"{shots}/lab-{w}-full.png", full_page=True)
    folders = [p for p in runs.iterdir() if (p / "model.safetensors").is_file()]
    assert len(folders) == 1 and folders[0].name.startswith("b-tiny--b")  # the name made safe for a folder

    open_tab(page, "Explore")
    page.locator("#model input").click()
    wait_until(page, lambda: page.get_by_role("option").filter(has_text="tiny").count() == 1, "the model in Explore")
    page.keyboard.press("Escape")
    assert_no_console_errors(page)
