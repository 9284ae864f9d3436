"""A family the app has never heard of: registered inside the test, then opened in every tab.

The family registry (``archplay.models.registry``) is the only place that lists families; the app
asks it what a model predicts and which views it has. So a new family, a ``Decoder`` under the
name "toy" here, must open in Explore, Compare and Architecture with no change to any other file:
through the handlers (fast), and in a real headless Chromium against the app served in-process.
The family is unregistered afterwards, so no other test sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from test_browser import (
    CHROMIUM,
    _array,
    assert_no_console_errors,
    choose_model,
    chromium_page,
    open_tab,
    wait_for_plot,
)

from archplay.app.catalog import Catalog
from archplay.models import registry
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.registry import Family
from archplay.models.story.tokenizer import ByteTokenizer

TEXT = "Mia has a red ball. Then Tom"
TITLE = "toy decoder, registered by a test"
APP = Path(__file__).resolve().parents[1] / "app"


@dataclass
class ToyConfig(DecoderConfig):
    name: str = "toy"
    family: str = field(default="toy", init=False)


class ToyDecoder(Decoder):
    """A decoder-only transformer under a family name of its own."""


def toy_rows(cfg) -> list[tuple[str, str]]:
    return [("layers", str(cfg.n_layer)), ("width (d_model)", str(cfg.d_model)), ("heads", str(cfg.n_head))]


TOY = Family(
    name="toy", title=TITLE, config=ToyConfig, model=ToyDecoder, objective="causal", card_rows=toy_rows,
    parameter_rules=((r"embed_tokens\.", "token embeddings"), (r"embed_positions\.", "position embeddings"),
                     (r"layers\.", "blocks"), (r"lm_head\.", "LM head")),
    trace_fields=("hidden_states", "attentions"), views=("attention",),
)  # fmt: skip


@pytest.fixture(scope="module")
def toy():
    """The toy family registered for this module's tests, and a tiny random model of it."""
    registry.register(TOY)
    try:
        torch.manual_seed(0)
        cfg = ToyConfig(vocab_size=ByteTokenizer().vocab_size, d_model=32, n_layer=2, n_head=4, max_seq_len=128,
                        trained=False)  # fmt: skip
        yield TOY.build(cfg).eval(), ByteTokenizer()
    finally:
        registry.unregister("toy")


@pytest.fixture(scope="module")
def catalog(toy) -> Catalog:
    """The app's models: one built-in beside the toy."""
    reg = Catalog.from_names([], device="cpu", builtins=("gpt",))
    reg.put("toy", *toy)
    return reg


def traced(toy, text: str = TEXT):
    model, tok = toy
    with torch.inference_mode():
        return model(torch.tensor([tok.encode(text)]), trace=True)


# --------------------------------------------------------------------------- through the handlers


def test_the_app_asks_the_registry_not_the_family_name():
    """No comparison of a family's name anywhere in app/, and one name per family and view."""
    offenders = []
    for path in sorted(APP.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bfamily\s*(==|!=|\bin\b|\bnot in\b)|FAMILIES|seq2seq|state_space|\btranslate\.", line):
                offenders.append(f"{path.relative_to(APP)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_explore_runs_a_new_family_and_draws_its_attention(catalog, toy):
    from archplay.app.explore import attention, generation, run

    r = run.analyse(catalog, "toy", TEXT, layer=1, head=2)
    assert r.ok and r.status.startswith("✓") and r.can_generate, r.status
    out = traced(toy)
    for layer, head in ((1, 2), (0, 3)):
        z = attention.attention_figure(r.analysis, layer, head).data[0].z
        np.testing.assert_allclose(np.asarray(z, dtype=np.float64), out.trace.attentions[layer][0, head].numpy(),
                                   rtol=0, atol=1e-7)  # fmt: skip
    assert r.head_info == attention.HEAD_INFO and r.routing is None and r.delta is None  # views it does not list
    assert "Causal" in r.mask_help and r.distribution is not None
    steps = list(generation.generate(catalog, "toy", TEXT, 3, 0.0))
    assert steps[-1].status.startswith("✓") and "Generated 3 tokens" in steps[-1].status


def test_compare_and_the_card_show_a_new_family(catalog, toy):
    from archplay.app import compare
    from archplay.app.card import card

    status, (_, new) = compare.compare(catalog, ["gpt", "toy"], TEXT)
    assert status.startswith("✓") and not new.message and new.view is not None
    mean = traced(toy).trace.attentions[-1][0].mean(0).numpy()  # the last layer, mean of heads
    np.testing.assert_allclose(np.asarray(new.view.data[0].z, dtype=np.float64), mean, rtol=0, atol=1e-6)
    table, fig = card(catalog, "toy")
    assert f"toy: {TITLE}" in table and int(np.asarray(fig.data[0].x).sum()) == sum(p.numel() for p in toy[0].parameters())


# --------------------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def served(catalog):
    """``build_app`` with the toy beside gpt, served in this process on a free port of 127.0.0.1."""
    from conftest import served_demo

    from archplay.app.main import build_app

    demo = build_app(catalog)
    with served_demo(demo) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(served):
    with chromium_page(served, timeout_ms=60_000) as pg:
        yield pg


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_a_new_family_opens_in_explore_compare_and_architecture(browser_page, toy):
    from playwright.sync_api import expect

    page = browser_page
    out = traced(toy)
    page.locator("#text textarea").fill(TEXT)
    choose_model(page, "toy")
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text("Ran toy")
    plot = wait_for_plot(page, "attention-plot", "Layer 0, head 0 of 2 × 4")
    # the page's maps are float16 (3 significant digits): exactly the float16 rounding
    np.testing.assert_array_equal(_array(plot["data"][0]["z"]), out.trace.attentions[0][0, 0].half().float().numpy())
    expect(page.locator("#tokens .ap-tok")).to_have_count(len(toy[1].encode(TEXT)))

    open_tab(page, "Compare")
    page.locator("#compare-text textarea").fill(TEXT)
    page.locator("#compare-models label").filter(has_text=re.compile(r"^\W*toy\b")).click()  # beside gpt
    page.locator("#compare-run").click()
    expect(page.locator("#compare-status")).to_contain_text("Compared 2 models")
    expect(page.locator("#compare-title-1")).to_contain_text("toy")
    view = wait_for_plot(page, "compare-view-1", "Attention, layer 1, mean of heads")
    np.testing.assert_allclose(_array(view["data"][0]["z"]), out.trace.attentions[1][0].mean(0).numpy(), atol=1e-6)
    wait_for_plot(page, "compare-surprisal-1", "Surprisal")

    open_tab(page, "Architecture")  # the card follows Explore's choice: the toy
    expect(page.locator("#card-table")).to_contain_text(f"toy: {TITLE}")
    wait_for_plot(page, "card-plot", "Parameters by component")
    open_tab(page, "Explore")
    assert_no_console_errors(page)
