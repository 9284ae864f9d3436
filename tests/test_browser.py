"""The Explore page in a real headless Chromium, against ``python -m archplay`` in a subprocess.

It types a text, presses Run, reads the plots' data back out of the DOM, moves sliders the way
a user does and checks each redraw against numbers computed here from the same model: so a
stale figure, a missed event or a wrong layer fails the test. Browser console errors fail it too.
Skipped (with the reason) when /usr/bin/chromium is not installed.
"""

from __future__ import annotations

import base64
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "assets" / "screenshots"
SCREENSHOT = SCREENSHOTS / "explore.png"
TEXT = "Sara has a pink letter. Then she reads her letter. Sara goes to the"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The server's --models-dir: one tiny random Llama checkpoint, loadable from the page."""
    from conftest import make_hf_model

    root = tmp_path_factory.mktemp("models")
    hf = make_hf_model("llama", root / "tiny-llama")
    return root, sum(p.numel() for p in hf.parameters())


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    """``python -m archplay`` on a free port of 127.0.0.1; yields its URL, stops it afterwards."""
    from conftest import app_server

    with app_server(tmp_path_factory.mktemp("server"), "--models-dir", str(models_dir[0])) as url:
        yield url


@contextmanager
def chromium_page(url: str, timeout_ms: int = 30_000):
    """A page of headless Chromium (Debian's, never a downloaded one) open on ``url``; it records
    console errors for ``assert_no_console_errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )  # fmt: skip
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            pg = context.new_page()
            pg.console_errors = []
            pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(f"{m.text} @ {m.location}"))
            pg.on("pageerror", lambda e: pg.console_errors.append(f"page error: {e}"))
            pg.set_default_timeout(timeout_ms)
            pg.goto(url)
            yield pg
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(server):
    with chromium_page(server) as pg:
        yield pg


@pytest.fixture(scope="module")
def model():
    from archplay.models import load

    return load("gpt", device="cpu")  # the same seeded weights the server built


# --------------------------------------------------------------------------- reading plots back


_READ_PLOT = """
(id) => {
  const gd = document.querySelector(`#${id} .js-plotly-plot`);
  if (!gd || !gd.data) return null;
  return {
    title: (gd.layout && gd.layout.title && gd.layout.title.text) || "",
    data: gd.data.map(t => ({
      name: t.name ?? null,
      x: t.x && t.x.bdata ? t.x : (t.x ? Array.from(t.x) : null),
      y: t.y && t.y.bdata ? t.y : (t.y ? Array.from(t.y) : null),
      z: t.z && t.z.bdata ? t.z : (t.z ? Array.from(t.z, r => Array.from(r)) : null),
      customdata: t.customdata && !t.customdata.bdata ? Array.from(t.customdata, r => Array.from(r)) : null,
    })),
  };
}
"""


def _array(value) -> np.ndarray:
    """A plotly array as the page holds it: a list, or a {"dtype", "bdata", "shape"} typed array."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if value.get("shape"):
            arr = arr.reshape([int(s) for s in str(value["shape"]).split(",")])
        return arr.astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def read_plot(page, elem_id: str) -> dict | None:
    return page.evaluate(_READ_PLOT, elem_id)


def plot_trace(plot: dict, name: str) -> dict:
    matches = [t for t in plot["data"] if t["name"] == name]
    assert len(matches) == 1, [t["name"] for t in plot["data"]]
    return matches[0]


def final_bars(plot: dict) -> tuple[list[int], np.ndarray]:
    final = next(t for t in plot["data"] if t["name"] == "final")
    return [int(row[1]) for row in final["customdata"]], _array(final["y"])


_TITLE_HAS = """
([id, text]) => {
  const gd = document.querySelector(`#${id} .js-plotly-plot`);
  return !!(gd && gd.layout && gd.layout.title && (gd.layout.title.text || "").includes(text));
}
"""


def wait_for_plot(page, elem_id: str, contains: str, timeout: float = 30.0) -> dict:
    """Wait (in the page, on each animation frame) until the plot's title contains ``contains``; returns the plot."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(_TITLE_HAS, arg=[elem_id, contains], timeout=timeout * 1000)
    except PlaywrightTimeout:
        plot = read_plot(page, elem_id)
        raise AssertionError(f"#{elem_id} never showed {contains!r}; last title: {plot and plot['title']!r}") from None
    return read_plot(page, elem_id)


def wait_until(page, predicate, what: str, timeout: float = 30.0, show=None):
    """Poll ``predicate`` until truthy; on timeout the message includes ``show()`` (what the page shows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"; the page shows: {show()!r}" if show else ""))


def choose_model(page, key: str) -> None:
    """Pick the built-in ``key`` in the model dropdown, as a user does (this runs the model too)."""
    page.locator("#model input").click()
    # an option reads "✓ t5 (untrained) — encoder-decoder, …": the key comes first after the mark
    page.get_by_role("option").filter(has_text=re.compile(rf"^\W*{re.escape(key)}\b")).first.click()


def set_slider(page, elem_id: str, value, *, via: str = "number") -> None:
    """Move a Gradio slider as a user would: type into its number box, or drag its range input."""
    if via == "number":
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))  # fires "input", which the slider turns into input + change events
        box.blur()
    else:
        page.evaluate(
            """([id, v]) => {
                const r = document.querySelector(`#${id} input[type=range]`);
                const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set;
                setter.call(r, String(v));
                r.dispatchEvent(new Event("input", {bubbles: true}));
                r.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
            }""",
            [elem_id, value],
        )


# --------------------------------------------------------------------------- the test


def open_grid(page) -> None:
    """Unfold "Every layer and head, and the mask pattern" (folded when the page opens)."""
    if not page.locator("#grid-plot .js-plotly-plot").is_visible():
        page.locator("#grid-section").get_by_text("Every layer and head").first.click()
    page.locator("#grid-plot .js-plotly-plot").wait_for(state="visible")


def half(t: torch.Tensor) -> np.ndarray:
    """What the page shows of an attention map: its float16 rounding (3 significant digits)."""
    return t.half().float().numpy().astype(np.float64)


def assert_no_console_errors(page) -> None:
    errors = [e for e in page.console_errors if "favicon" not in e]
    assert not errors, "browser console errors:\n" + "\n".join(errors)


def expected_state(model, text):
    net, tok = model
    ids = tok.encode(text)
    with torch.inference_mode():
        out = net(torch.tensor([ids]), trace=True)
    return ids, out


def test_explore_page_end_to_end(page, model):
    from archplay.models.sampling import staged_distribution

    # The page runs the default text on load; then we type our own and press Run.
    wait_for_plot(page, "distribution-plot", "position")
    page.locator("#text textarea").fill(TEXT)
    page.locator("#run").click()
    ids, out = expected_state(model, TEXT)
    last = len(ids) - 1
    last_label = model[1].tokens([ids[-1]])[0]  # the title names the token: a stale plot cannot pass
    plot = wait_for_plot(page, "distribution-plot", f"{last_label}’ (position {last})")

    # tokens strip: one chip per token, the text escaped and intact
    chips = page.locator("#tokens .ap-tok")
    assert chips.count() == len(ids)
    assert chips.nth(0).get_attribute("title").startswith("#0 · id ")
    assert page.locator("#status").inner_text().startswith("✓")

    # distribution at T=1 equals the model's own
    bar_ids, final = final_bars(plot)
    expected = staged_distribution(out.logits[0, -1], 1.0).final[bar_ids].numpy()
    np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-7)

    # attention: layer 0 head 0 on Run
    att = wait_for_plot(page, "attention-plot", "Layer 0, head 0")
    z = _array(att["data"][0]["z"])
    np.testing.assert_array_equal(z, half(out.trace.attentions[0][0, 0]))

    # from here the sliders redraw in the page: no request reaches the server (issue 14)
    joins = []
    page.on("request", lambda r: "/queue/join" in r.url and joins.append(r.url))

    # temperature 1 → 0.3 through the number box: the final bars change to the T=0.3 values
    set_slider(page, "temperature", 0.3)
    plot = wait_for_plot(page, "distribution-plot", "T=0.30")
    bar_ids, final_cold = final_bars(plot)
    assert not np.allclose(final_cold, final)
    expected = staged_distribution(out.logits[0, -1], 0.3).final[bar_ids].numpy()
    np.testing.assert_allclose(final_cold, expected, rtol=1e-5, atol=1e-7)

    # top-k 0 → 5 by dragging the range input: exactly five tokens keep probability
    set_slider(page, "top-k", 5, via="range")
    plot = wait_for_plot(page, "distribution-plot", "top-k 5")
    bar_ids, final_k = final_bars(plot)
    expected = staged_distribution(out.logits[0, -1], 0.3, 5).final[bar_ids].numpy()
    np.testing.assert_allclose(final_k, expected, rtol=1e-5, atol=1e-7)
    assert int((final_k > 0).sum()) == 5

    # the attention sliders redraw the chosen layer and head
    set_slider(page, "layer", 2)
    set_slider(page, "head", 3)
    att = wait_for_plot(page, "attention-plot", "Layer 2, head 3")
    np.testing.assert_array_equal(_array(att["data"][0]["z"]), half(out.trace.attentions[2][0, 3]))
    assert joins == [], "temperature, top-k, layer and head moves must not call the server"

    # samples are drawn in the page too, from the distribution shown, the same for the same seed
    page.locator("#sample-many").click()
    hist = wait_for_plot(page, "sample-plot", "200 draws")
    assert sum(_array(plot_trace(hist, "share of 200 draws")["y"])) <= 1.0 + 1e-9 and joins == []
    assert set(int(r[1]) for r in plot_trace(hist, "share of 200 draws")["customdata"]) <= set(bar_ids)  # top-k 5

    # the address holds the text and settings: a reload reopens the same view
    assert "temperature=0.3" in page.url and "top_k=5" in page.url and "head=3" in page.url
    page.reload()
    plot = wait_for_plot(page, "distribution-plot", f"{last_label}’ (position {last})")
    assert "top-k 5" in plot["title"] and "T=0.30" in plot["title"]
    wait_for_plot(page, "attention-plot", "Layer 2, head 3")

    # Generate streams a continuation of the text (greedy at T=0 would be deterministic; any works)
    set_slider(page, "max-new-tokens", 12)
    page.locator("#generate").click()
    status = wait_until(page, lambda: (t := page.locator("#generate-status").inner_text()).startswith("✓") and t,
                        "the end of generation", timeout=60,
                        show=lambda: (page.locator("#generate-status").inner_text(),
                                      page.locator("#generate-note").inner_text(),
                                      page.locator("#generated textarea").input_value()))  # fmt: skip
    assert "Generated 12 tokens" in status or "stopped at the end" in status, status
    assert page.locator("#generated textarea").input_value().startswith(TEXT)
    pieces = page.locator("#generated-html .ap-gen")  # the new tokens, shaded by their probability
    assert pieces.count() in range(1, 13) and pieces.first.get_attribute("title").startswith("p = ")

    # an empty text is reported on the page, and the server keeps serving
    page.locator("#text textarea").fill("   ")
    page.locator("#run").click()
    wait_until(page, lambda: "Type some text" in page.locator("#status").inner_text(), "the empty-text message")
    page.locator("#text textarea").fill(TEXT)
    page.locator("#run").click()
    wait_until(page, lambda: page.locator("#status").inner_text().startswith("✓"), "a successful rerun")
    wait_for_plot(page, "distribution-plot", "top-k 5")

    if os.environ.get("ARCHPLAY_SCREENSHOTS"):  # refresh the README's picture on request only
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(500)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    assert_no_console_errors(page)


# --------------------------------------------------------------------------- the other families


def test_t5_translation_and_cross_attention_in_the_page(page):
    from archplay.app.explore.translation import budget
    from archplay.models import load

    net, tok = load("t5", device="cpu")
    ids = torch.tensor([tok.encode(TEXT)])
    with torch.inference_mode():
        new = net.generate(ids, max_new_tokens=budget(ids.shape[1]), temperature=0.0, eos_token_id=tok.eos_token_id)
        start = torch.full((1, 1), net.config.decoder_start_token_id)
        out = net(ids, decoder_input_ids=torch.cat([start, new[:, :-1]], dim=1), trace=True)
    page.locator("#text textarea").fill(TEXT)
    choose_model(page, "t5")
    page.locator("#run").click()
    wait_until(page, lambda: "translated it greedily" in page.locator("#status").inner_text(), "the translation")
    # the tokens strip shows what the decoder wrote, and says what the invented language is
    strip = page.locator("#tokens")
    written = [c.inner_text().split(maxsplit=1)[-1] for c in strip.locator(".ap-tokens").nth(1).locator(".ap-tok").all()]
    assert written == [s.strip() or s for s in tok.tokens(new[0].tolist())] or len(written) == new.shape[1]
    assert "language invented for the story world" in strip.inner_text()

    # T5 opens on cross-attention (the alignment); the layer and head sliders keep their places: read the title
    plot = wait_for_plot(page, "attention-plot", "Cross-attention: layer")
    layer, head = map(int, re.search(r"layer (\d+), head (\d+)", plot["title"]).groups())
    z = _array(plot["data"][0]["z"])
    assert z.shape == (new.shape[1], ids.shape[1])  # rows: target steps, columns: source tokens
    np.testing.assert_array_equal(z, half(out.trace.cross_attentions[layer][0, head]))

    last = net.config.n_decoder_layer - 1  # the deepest cross-attention layer
    set_slider(page, "layer", last)
    set_slider(page, "head", 1)
    plot = wait_for_plot(page, "attention-plot", f"Cross-attention: layer {last}, head 1")
    np.testing.assert_array_equal(_array(plot["data"][0]["z"]), half(out.trace.cross_attentions[last][0, 1]))

    # and back to the encoder's self-attention: the maps of that kind come from the server once
    page.locator("#attention-kind label").filter(has_text="encoder self-attention").click()
    plot = wait_for_plot(page, "attention-plot", f"Encoder self-attention: layer {last}")
    np.testing.assert_array_equal(_array(plot["data"][0]["z"]), half(out.trace.attentions[last][0, 1]))

    # the distribution panel follows the translation step
    set_slider(page, "step", 1)
    plot = wait_for_plot(page, "distribution-plot", "Translation step 1")
    bar_ids, _ = final_bars(plot)
    assert bar_ids[0] == int(new[0, 1])  # greedy: step 1's favourite is the token it wrote

    assert_no_console_errors(page)


def test_moe_routing_marks_in_the_page(page):
    from archplay.models import load

    net, tok = load("moe", device="cpu")
    ids = tok.encode(TEXT)
    with torch.inference_mode():
        out = net(torch.tensor([ids]), trace=True)

    choose_model(page, "moe")
    page.locator("#run").click()
    plot = wait_for_plot(page, "routing-plot", "Router, layer 0")
    marks = plot_trace(plot, "chosen")
    chosen = out.trace.expert_indices[0][0]  # (T, k)
    np.testing.assert_array_equal(_array(marks["x"]), chosen.reshape(-1).numpy())
    np.testing.assert_array_equal(_array(marks["y"]), np.repeat(np.arange(len(ids)), chosen.shape[1]))
    probs = torch.softmax(out.trace.router_logits[0][0].float(), dim=-1).numpy()
    np.testing.assert_allclose(_array(plot_trace(plot, "router probability")["z"]), probs, atol=1e-6)
    assert page.locator("#routing-chips .ap-exp").count() == len(ids)

    set_slider(page, "moe-layer", 2)
    plot = wait_for_plot(page, "routing-plot", "Router, layer 2")
    marks = plot_trace(plot, "chosen")
    np.testing.assert_array_equal(_array(marks["x"]), out.trace.expert_indices[2][0].reshape(-1).numpy())
    load_plot = wait_for_plot(page, "load-plot", "Load, layer 2")
    shares = _array(plot_trace(load_plot, "load")["y"])
    assert shares.sum() == pytest.approx(1.0, abs=1e-6)

    assert_no_console_errors(page)


# --------------------------------------------------------------------------- the other views and tabs


def screenshot(page, name: str) -> None:
    """Refresh ``assets/screenshots/<name>.png`` (the README's pictures) on request only."""
    if os.environ.get("ARCHPLAY_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(500)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_grid_mask_position_and_sampling_in_the_page(page, model):
    from archplay.models.sampling import staged_distribution

    net, tok = model
    choose_model(page, "gpt")
    page.locator("#text textarea").fill(TEXT)
    page.locator("#run").click()
    ids, out = expected_state(model, TEXT)
    open_grid(page)
    grid = wait_until(page, lambda: (g := read_plot(page, "grid-plot")) and len(g["data"]) == 16 and g, "the grid")
    # thumbnail (layer 1, head 2) is trace 1 * 4 + 2; at this length it is the full map (as the page got it)
    np.testing.assert_array_equal(_array(grid["data"][6]["z"]), half(out.trace.attentions[1][0, 2]))
    # clicking a thumbnail chooses it: trace 11 (layer 2, head 3) is drawn on the axes x12 / y12
    page.locator("#grid-plot .draglayer .x12y12 .nsewdrag").click()
    att = wait_for_plot(page, "attention-plot", "Layer 2, head 3")
    np.testing.assert_array_equal(_array(att["data"][0]["z"]), half(out.trace.attentions[2][0, 3]))
    assert [page.locator(f"#{s} input[type=number]").input_value() for s in ("layer", "head")] == ["2", "3"]
    frame_x0 = "() => document.querySelector('#grid-plot .js-plotly-plot').layout.shapes[0].x0"
    wait_until(page, lambda: page.evaluate(frame_x0) > 0.5, "the grid redrawn with head 3 framed")
    page.locator("#grid-plot .draglayer .xy .nsewdrag").click()  # and again after the redraw: layer 0, head 0
    wait_for_plot(page, "attention-plot", "Layer 0, head 0")
    mask = wait_for_plot(page, "mask-plot", "causal")
    z = _array(mask["data"][0]["z"])
    assert np.array_equal(z, np.tril(np.ones_like(z)))

    # a prediction at an earlier position: the bars are that row's distribution
    set_slider(page, "position", 3)
    plot = wait_for_plot(page, "distribution-plot", "(position 3)")
    bar_ids, final = final_bars(plot)
    settings = [float(page.locator(f"#{s} input[type=number]").input_value()) for s in ("temperature", "top-k", "top-p")]
    staged = staged_distribution(out.logits[0, 3], settings[0], int(settings[1]), settings[2])
    np.testing.assert_allclose(final, staged.final[bar_ids].numpy(), rtol=1e-5, atol=1e-7)

    # sample 200 times: the histogram counts 200 draws, all from tokens that can still be drawn
    page.locator("#sample-many").click()
    hist = wait_for_plot(page, "sample-plot", "200 draws")
    drawn = [int(row[1]) for row in plot_trace(hist, "share of 200 draws")["customdata"]]
    assert all(bool(staged.kept[i]) for i in drawn)
    assert _array(plot_trace(hist, "share of 200 draws")["y"]).sum() <= 1.0 + 1e-9
    page.locator("#sample-once").click()
    wait_for_plot(page, "sample-plot", "1 draw at position 3")
    screenshot(page, "explore")

    assert_no_console_errors(page)


def test_mamba_and_bert_views_in_the_page(page):
    from archplay.models import load

    net, tok = load("mamba", device="cpu")
    ids = tok.encode(TEXT)
    with torch.inference_mode():
        out = net(torch.tensor([ids]), trace=True)
    page.locator("#text textarea").fill(TEXT)
    choose_model(page, "mamba")  # runs the model on the text
    wait_until(page, lambda: "mamba" in (t := page.locator("#status").inner_text()) and f"on {len(ids)} tokens" in t,
               "the mamba run", show=lambda: page.locator("#status").inner_text())  # fmt: skip
    plot = wait_for_plot(page, "attention-plot", "hidden attention")
    layer = int(re.search(r"Layer (\d+)", plot["title"]).group(1))
    np.testing.assert_array_equal(_array(plot["data"][0]["z"]), half(out.trace.ssm_attention[layer][0]))
    delta = wait_for_plot(page, "delta-plot", "step size")
    assert len(_array(plot_trace(delta, "mean Δ")["y"])) == len(ids)
    open_grid(page)
    grid = wait_until(page, lambda: (g := read_plot(page, "grid-plot")) and len(g["data"]) == net.config.n_layer and g,
                      "the hidden-attention grid")  # fmt: skip
    assert "hidden attention" in grid["title"]
    assert "no attention mask" in page.locator("#mask-help").inner_text().lower()

    page.locator("#text textarea").fill("Sara has a pink letter. Then Sara reads her <mask>.")
    choose_model(page, "bert")
    plot = wait_for_plot(page, "distribution-plot", "What fits at position")
    bar_ids, _ = final_bars(plot)
    assert tok.decode([bar_ids[0]]).strip() == "letter"  # the context determines the word
    mask = wait_for_plot(page, "mask-plot", "bidirectional")
    assert _array(mask["data"][0]["z"]).all()

    assert_no_console_errors(page)


def test_lens_embeddings_compare_and_architecture_tabs(page, model):
    from archplay.models.analysis.lens import logit_lens

    net, tok = model
    ids, out = expected_state(model, TEXT)
    page.locator("#text textarea").fill(TEXT)
    choose_model(page, "gpt")  # this Run feeds the Logit lens and Embeddings tabs
    wait_until(page, lambda: "gpt" in (t := page.locator("#status").inner_text()) and f"on {len(ids)} tokens" in t,
               "the gpt run", show=lambda: page.locator("#status").inner_text())  # fmt: skip
    open_tab(page, "Logit lens")
    lens = wait_for_plot(page, "lens-plot", "Logit lens")
    expected = logit_lens(net, out.trace.hidden_states)
    np.testing.assert_allclose(_array(lens["data"][0]["z"]), expected.top_probs[..., 0].numpy(), atol=1e-5)
    screenshot(page, "lens")

    open_tab(page, "Embeddings")
    scatter = wait_for_plot(page, "emb-scatter", "tokens")
    groups = {t["name"] for t in scatter["data"]}
    assert {"NAME", "VERB", "NOUN"} <= groups, groups  # coloured by the story world's parts of speech
    assert sum(len(t["x"]) if isinstance(t["x"], list) else len(_array(t["x"])) for t in scatter["data"]) == len(ids)
    wait_for_plot(page, "emb-path", "through the layers")
    page.locator("#sent-run").click()
    sim = wait_for_plot(page, "sent-similarity", "similarity")
    assert np.allclose(np.diag(_array(sim["data"][0]["z"])), 1.0, atol=1e-5)
    screenshot(page, "embeddings")

    open_tab(page, "Compare")
    page.locator("#compare-text textarea").fill(TEXT)
    page.locator("#compare-models label").filter(has_text=re.compile(r"^\W*moe\b")).click()  # gpt, mamba + moe
    page.locator("#compare-run").click()
    wait_until(page, lambda: page.locator("#compare-status").inner_text().startswith("✓"), "the comparison")
    titles = [page.locator(f"#compare-title-{i}").inner_text() for i in range(3)]
    assert [t.split()[0] for t in titles] == ["gpt", "mamba", "moe"], titles  # in the order they were ticked
    assert "active per token" in titles[2] and "forward" in titles[1]
    assert not page.locator("#compare-slot-3").is_visible()
    surprisal = wait_for_plot(page, "compare-surprisal-0", "Surprisal")
    bits = _array(surprisal["data"][0]["y"])[1:]
    logp = torch.log_softmax(out.logits[0, :-1], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    np.testing.assert_allclose(bits, (-logp / np.log(2)).numpy(), rtol=1e-4)
    page.locator("#compare-measure").click()
    chart = wait_for_plot(page, "compare-latency", "latency", timeout=120)
    lines = [t for t in chart["data"] if t["name"] and not t["name"].startswith("∝")]
    assert len(lines) == 3 and all(len(t["x"]) == 6 for t in lines)
    screenshot(page, "compare")

    open_tab(page, "Architecture")
    plot = wait_for_plot(page, "card-plot", "Parameters by component")
    assert int(_array(plot["data"][0]["x"]).sum()) == sum(p.numel() for p in net.parameters())
    assert "layers" in page.locator("#card-table").inner_text()
    screenshot(page, "architecture")
    open_tab(page, "Explore")

    assert_no_console_errors(page)


def test_a_run_landing_while_a_following_tab_is_open_is_drawn_there(page, model):
    """Run pressed, then the Logit lens opened before the answer: the lens shows that Run when it lands (the
    page selects the open tab again, app.follow), not the one it drew when opened."""
    from archplay.models.analysis.lens import logit_lens

    net, tok = model
    text = "Tom sees a big green kite. He runs to the"
    ids, out = expected_state(model, text)
    open_tab(page, "Explore")
    choose_model(page, "gpt")
    wait_until(page, lambda: "gpt" in page.locator("#status").inner_text(), "the gpt run")
    page.locator("#text textarea").fill(text)
    open_tab(page, "Logit lens")
    page.evaluate("() => document.querySelector('#run').click()")  # the Explore tab's Run, pressed from here
    expected = logit_lens(net, out.trace.hidden_states).top_probs[..., 0].numpy()
    lens = wait_until(page, lambda: (p := read_plot(page, "lens-plot")) and _array(p["data"][0]["z"]).shape
                      == expected.shape and p, "the lens to show the Run that landed")  # fmt: skip
    np.testing.assert_allclose(_array(lens["data"][0]["z"]), expected, atol=1e-5)
    open_tab(page, "Explore")
    assert_no_console_errors(page)


def test_a_checkpoint_loaded_from_the_page_appears_in_every_model_list(page, server, models_dir):
    _, n_params = models_dir
    open_tab(page, "Compare")  # before: only what the server started with
    assert page.locator("#compare-models label").filter(has_text="tiny-llama").count() == 0
    open_tab(page, "Explore")
    page.locator("#load-section").get_by_text("Load a checkpoint").click()
    page.locator("#folder input").fill("tiny-llama")
    page.locator("#folder input").press("Enter")
    page.locator("#load").click()
    wait_until(page, lambda: "Loaded" in page.locator("#status").inner_text(), "the checkpoint to load",
               show=lambda: page.locator("#status").inner_text())  # fmt: skip
    assert "tiny-llama" in page.locator("#model input").input_value()  # Explore picked it

    open_tab(page, "Compare")
    wait_until(page, lambda: page.locator("#compare-models label").filter(has_text="tiny-llama").count() == 1,
               "tiny-llama among Compare's models")  # fmt: skip
    open_tab(page, "Architecture")  # the card follows Explore's choice, and has it in its list
    wait_until(page, lambda: "tiny-llama" in page.locator("#card-model input").input_value(), "the card's model")
    plot = wait_for_plot(page, "card-plot", "tiny-llama")
    assert int(_array(plot["data"][0]["x"]).sum()) == n_params

    other = page.context.new_page()  # another visitor, arriving after the load, is offered it too
    try:
        other.goto(server)
        other.locator("#model input").click()
        wait_until(other, lambda: other.get_by_role("option").filter(has_text="tiny-llama").count() == 1,
                   "tiny-llama in a new page's model list")  # fmt: skip
    finally:
        other.close()
    open_tab(page, "Explore")
    choose_model(page, "gpt")
    assert_no_console_errors(page)


_PLOT_BOXES = """
(id) => {
  const gd = document.querySelector(`#${id} .js-plotly-plot`);
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  return {svg: box(gd.querySelector(".main-svg")), title: box(gd.querySelector(".gtitle")),
          yrange: Array.from(gd._fullLayout.yaxis.range)};
}
"""


def test_compare_panels_stand_side_by_side_at_1024(page, server):
    """Issue 14: four models' panels in one row at 1024 × 768, every map's title inside its plot (Mamba's
    was cut off), and one surprisal scale for all."""
    pg = page.context.new_page()
    pg.console_errors = []
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(f"{m.text} @ {m.location}"))
    pg.on("pageerror", lambda e: pg.console_errors.append(f"page error: {e}"))
    try:
        pg.set_viewport_size({"width": 1024, "height": 768})
        pg.goto(server)
        open_tab(pg, "Compare")
        for key in ("moe", "bert"):  # beside gpt and mamba, ticked from the start
            pg.locator("#compare-models label").filter(has_text=re.compile(rf"^\W*{key}\b")).click()
        pg.locator("#compare-run").click()
        wait_until(pg, lambda: pg.locator("#compare-status").inner_text().startswith("✓ Compared 4"), "the comparison",
                   timeout=60, show=lambda: pg.locator("#compare-status").inner_text())  # fmt: skip
        for i, title in enumerate(("Attention", "Hidden attention", "Router", "Attention")):
            wait_for_plot(pg, f"compare-view-{i}", title)
            wait_for_plot(pg, f"compare-surprisal-{i}", "urprisal")
        slots = [pg.locator(f"#compare-slot-{i}").bounding_box() for i in range(4)]
        assert len({round(b["y"]) for b in slots}) == 1, slots  # one row
        rights = [b["x"] + b["width"] for b in slots]
        assert all(r <= b["x"] for r, b in zip(rights, slots[1:])) and rights[3] <= 1024, slots  # side by side
        for i in range(4):
            view = pg.evaluate(_PLOT_BOXES, f"compare-view-{i}")
            (left, top, right, _), (t_left, t_top, t_right, _) = view["svg"], view["title"]
            assert left <= t_left and t_right <= right + 1 and top <= t_top, (i, view)  # the whole title shows
        ranges = {tuple(pg.evaluate(_PLOT_BOXES, f"compare-surprisal-{i}")["yrange"]) for i in range(4)}
        assert len(ranges) == 1, ranges
        assert_no_console_errors(pg)
    finally:
        pg.close()


def test_export_theme_and_a_model_switch_in_the_page(page, server):
    """Issue 14: every plot exports as a standalone HTML file (plotly.js inside), SVG and PNG; plots
    follow the dark theme and back; a new model clears the old model's generated text."""
    choose_model(page, "gpt")
    page.locator("#text textarea").fill(TEXT)
    page.locator("#run").click()
    plot = wait_for_plot(page, "distribution-plot", "(position")
    bar = page.locator("#distribution-plot .ap-export")
    assert [b.inner_text() for b in bar.locator("button").all()] == ["HTML", "SVG", "PNG"]

    with page.expect_download() as download:
        bar.get_by_text("HTML").click()
    html = Path(download.value.path()).read_text(encoding="utf-8")
    assert download.value.suggested_filename.endswith(".html") and html.startswith("<!doctype html>")
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js itself travels inside the file
    assert '"name":"final"' in html and html.count("</script>") == 2  # nothing inside can close its script early
    with page.expect_download() as download:
        bar.get_by_text("SVG").click()
    svg = Path(download.value.path()).read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "Next token after" in svg
    with page.expect_download() as download:
        bar.get_by_text("PNG").click()
    assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the dark theme: the plots' paper follows the page, and comes back
    paper = "() => document.querySelector('#distribution-plot .js-plotly-plot')._fullLayout.paper_bgcolor"
    page.evaluate("() => document.body.classList.add('dark')")
    wait_until(page, lambda: page.evaluate(paper) == "#111827", "dark plots", show=lambda: page.evaluate(paper))
    page.evaluate("() => document.body.classList.remove('dark')")
    wait_until(page, lambda: page.evaluate(paper) in ("white", "#fff", "#ffffff"), "light plots",
               show=lambda: page.evaluate(paper))  # fmt: skip

    # a new model: the old one's continuation goes (it was left on the page before)
    set_slider(page, "max-new-tokens", 3)
    page.locator("#generate").click()
    wait_until(page, lambda: page.locator("#generate-status").inner_text().startswith("✓"), "the generation")
    assert page.locator("#generated textarea").input_value().startswith(TEXT)
    choose_model(page, "bert")
    wait_until(page, lambda: page.locator("#generated textarea").input_value() == "", "the old text cleared",
               show=lambda: page.locator("#generated textarea").input_value())  # fmt: skip
    # and the examples are the masked model's own: a blank to fill in its spelling
    page.locator("#example input").click()
    page.get_by_role("option").filter(has_text="<mask>").first.click()  # it goes into the text and runs
    wait_until(page, lambda: "<mask>" in page.locator("#text textarea").input_value(), "the example in the text box")
    wait_for_plot(page, "distribution-plot", "What fits at position")
    assert plot["title"]
    assert_no_console_errors(page)


_DRAFT = """
async ([slider, value, expected]) => {
  const gd = document.querySelector('#distribution-plot .js-plotly-plot');
  const before = Array.from(gd.data[2].y);
  const range = document.querySelector(`#${slider} input[type=range]`);
  Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(range, String(value));
  range.dispatchEvent(new Event("input", {bubbles: true}));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const full = gd._fullLayout, ya = full.yaxis, ya2 = full.yaxis2;
  const group = (i) => Array.from(gd.querySelectorAll('.barlayer .trace, .scatterlayer .trace'))
    .find(g => g.__data__ && g.__data__[0].trace.index === i);
  const tops = Array.from(group(2).querySelectorAll('.point path'), p => +/V([^H]+)H/.exec(p.getAttribute('d'))[1]);
  const markers = (i) => group(i) ? group(i).querySelectorAll('.point').length : 0;
  const label = gd.querySelector('.annotation .bg').getBoundingClientRect();
  const plot = gd.querySelector('.main-svg').getBoundingClientRect();
  return {draft: Array.from(gd.data[2].y).every((v, j) => v === before[j]),
          error: Math.max(...tops.map((t, j) => Math.abs(t - ya.c2p(expected.final[j])))),
          kept: markers(3), removed: markers(4),
          label: label.bottom - (plot.top + ya._offset + ya2.c2p(expected.top_p)),
          title: gd.querySelector('.gtitle').textContent};
}
"""


def test_a_slider_move_is_drawn_at_once_and_exact(page, model):
    """Issue 14: a move is drawn in the shown picture at the next frame (no Plotly redraw, which cost a
    long task), and what it draws is the staged distribution: each final bar's height, the kept and
    removed markers (their split changes with the temperature under top-p), the top-p label's place."""
    from archplay.models.sampling import staged_distribution

    choose_model(page, "gpt")
    page.locator("#text textarea").fill(TEXT)
    page.locator("#run").click()
    ids, out = expected_state(model, TEXT)
    wait_for_plot(page, "distribution-plot", f"(position {len(ids) - 1})")
    set_slider(page, "top-p", 0.9)
    plot = wait_for_plot(page, "distribution-plot", "top-p 0.90")
    bar_ids, _ = final_bars(plot)
    top_k = int(float(page.locator("#top-k input[type=number]").input_value()))
    drafts = []
    for slider, temperature, top_p in (("temperature", 0.4, 0.9), ("temperature", 1.6, 0.9), ("top-p", 1.6, 0.5)):
        staged = staged_distribution(out.logits[0, -1], temperature, top_k, top_p)
        expected = {"final": staged.final[bar_ids].tolist(), "top_p": top_p}
        value = temperature if slider == "temperature" else top_p
        seen = page.evaluate(_DRAFT, [slider, value, expected])
        kept = int(staged.kept[bar_ids].sum())
        assert seen["error"] < 0.6, seen  # pixels: each final bar's top where its probability puts it
        assert (seen["kept"], seen["removed"]) == (kept, len(bar_ids) - kept), seen
        assert abs(seen["label"]) < 3, seen
        assert f"T={temperature:.2f}" in seen["title"] and f"top-p {top_p:.2f}" in seen["title"], seen
        drafts.append(seen["draft"])
        k = f"top-k {top_k}" if top_k else "top-k off"
        settled = wait_for_plot(page, "distribution-plot", f"T={temperature:.2f} · {k} · top-p {top_p:.2f}")
        np.testing.assert_allclose(final_bars(settled)[1], staged.final[bar_ids].numpy(), rtol=1e-5, atol=1e-7)
    assert any(drafts), "every move waited for a full redraw"
    assert_no_console_errors(page)
