"""The page's script (app/explore/page.js) against the Python it stands in for, in headless Chromium.

The sliders redraw in the browser, so the browser's numbers must be the server's: the sampling
stages equal ``staged_distribution`` over a grid of settings, edges included, at the built-ins'
1,280-token vocabulary and at GPT-2's 50,257; the colour cap equals ``viz.attention.colour_top``;
the grid's thumbnails equal ``viz.attention.downsample``. The script runs in a blank page (no
server): it is a plain function that installs ``window.archplay``.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from test_browser import CHROMIUM, chromium_page

from archplay.app.explore.page import PAGE_JS
from archplay.models.sampling import staged_distribution
from archplay.viz.attention import colour_top, downsample

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]


@pytest.fixture(scope="module")
def js():
    with chromium_page("about:blank") as pg:
        pg.evaluate(f"({PAGE_JS})()")
        yield pg


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<f4").tobytes()).decode()


_STAGES = """
([logits, grid]) => {
  const bytes = Uint8Array.from(atob(logits), c => c.charCodeAt(0));
  const l = new Float32Array(bytes.buffer), order = window.archplay.order(l);
  const enc = (arr, T) => {
    const t = T.from(arr), u = new Uint8Array(t.buffer);
    let s = ""; for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
    return btoa(s);
  };
  return grid.map(([t, k, p]) => {
    const st = window.archplay.staged(l, t, k, p, order);
    return {kept: enc(st.kept, Uint8Array), final: enc(st.final, Float32Array), tempered: enc(st.tempered, Float32Array),
            raw: enc(st.raw, Float32Array), n: st.nKept, t: st.temperature};
  });
}
"""


def _decode(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


def vocab_logits(vocab: int) -> torch.Tensor:
    """A built-in's real logits (1,280) or GPT-2-sized random ones with ties, a -inf and a wide range."""
    if vocab == 1280:
        from archplay.models import load

        net, tok = load("gpt", device="cpu")
        with torch.inference_mode():
            return net(torch.tensor([tok.encode("Sara has a pink letter. Then Sara reads her")])).logits[0, -1].float()
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(vocab, generator=gen) * 4
    logits[10:20] = logits[5]  # a block of ties (top-k keeps ties at its boundary)
    logits[7] = float("-inf")  # a token the model rules out
    logits[11] = logits.max() + 0.5  # a clear favourite
    return logits


@pytest.mark.parametrize("vocab", [1280, 50257])
def test_the_pages_sampling_stages_equal_staged_distribution(js, vocab):
    logits = vocab_logits(vocab)
    temperatures = [0.0, 5e-5, 1e-4, 0.3, 1.0, 2.0]
    top_ks = [0, 1, 13, 50, vocab - 1, vocab, vocab + 10]
    top_ps = [0.01, 0.5, 0.9, 1.0]
    if vocab > 10_000:  # the big vocabulary: fewer combinations, the same edges
        temperatures, top_ks, top_ps = [0.0, 5e-5, 0.7, 2.0], [0, 1, 13, vocab, vocab + 10], [0.01, 0.9, 1.0]
    grid = [[t, k, p] for t in temperatures for k in top_ks for p in top_ps]
    results = js.evaluate(_STAGES, [b64(logits.numpy()), grid])
    for (t, k, p), got in zip(grid, results):
        want = staged_distribution(logits, t, k, p)
        where = f"T={t} top-k={k} top-p={p} V={vocab}"
        kept = _decode(got["kept"], np.uint8).astype(bool)
        np.testing.assert_array_equal(kept, want.kept.numpy(), err_msg=where)
        assert got["n"] == int(want.kept.sum()), where
        # probabilities to float32 precision: torch sums 50,257 terms in float32, the page in float64
        for stage in ("final", "tempered", "raw"):
            np.testing.assert_allclose(_decode(got[stage], np.float32), getattr(want, stage).numpy(), rtol=5e-5,
                                       atol=1e-7, err_msg=f"{stage}: {where}")  # fmt: skip
        assert got["t"] == want.temperature, where  # a temperature below 1e-4 is greedy, reported as 0


def test_the_pages_colour_cap_and_thumbnails_equal_the_viz_builders(js):
    gen = torch.Generator().manual_seed(0)
    for n in (5, 40, 97):  # a short text keeps the largest weight; a long one gets the cap
        scores = torch.randn(n, n, generator=gen) * 2
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        z = torch.softmax(scores, -1).numpy().astype(np.float32)
        top, capped = js.evaluate(
            "([rows, q, m]) => window.archplay.colourTop(rows.map(r => Float32Array.from(r)), q, m)",
            [z.tolist(), 0.99, 100],
        )  # fmt: skip
        want_top, want_capped = colour_top(z)
        assert capped == want_capped and top == pytest.approx(want_top, rel=1e-6), n
        assert capped == (n >= 40)
    z = np.random.default_rng(1).random((97, 70)).astype(np.float32)
    thumbs = js.evaluate("(rows) => window.archplay.downsampled(rows.map(r => Float32Array.from(r)), 32).map(r => Array.from(r))",
                         z.tolist())  # fmt: skip
    np.testing.assert_allclose(np.array(thumbs), downsample(z, 32), rtol=1e-5)


def test_the_pages_samples_follow_the_seed_and_the_distribution(js):
    logits = vocab_logits(1280)
    row = {"logits": b64(logits.numpy()), "top": [[0, "a"]], "pos": 3, "title": "t", "base": {"layout": {}}}
    draw = """([row, seed]) => {
      const AP = window.archplay;
      AP.state.payload = {colours: {final: "#000000", threshold: "#000000"}};
      AP.setRow(row); AP.state.draws = 0;
      const [fig] = AP.sample(2000, seed, 1.0, 0, 1.0);
      return fig.data[0].customdata.map(r => [r[1], r[2]]);
    }"""
    a, b, c = (js.evaluate(draw, [row, s]) for s in (7, 7, 8))
    assert a == b and a != c  # same seed and click, same draws
    final = staged_distribution(logits).final.numpy()
    for token, count in a[:5]:  # the most drawn tokens: shares near their probabilities
        assert abs(count / 2000 - final[token]) < 4 * np.sqrt(final[token] / 2000) + 1e-3


_MASK = """
([rule, n]) => {
  window.archplay.state.attn = {masks: [rule], nq: n, nk: n, mask_base: {data: [{}], layout: {title: {}}}};
  const [fig, help] = window.archplay.mask(0);
  return {z: fig.data[0].z.map((r) => Array.from(r)), title: fig.layout.title.text, help};
}
"""


@pytest.mark.parametrize("pattern", ["causal", "bidirectional", "sliding", "strided", "block", "bidirectional sliding",
                                     "bidirectional strided", "bidirectional block"])  # fmt: skip
def test_masks_drawn_in_the_page_equal_the_servers(js, pattern):
    """Issue 15: every attention pattern a layer may have is drawn in the page as the server computes it."""
    from archplay.app.explore.attention import mask_matrix

    window = None if pattern in ("causal", "bidirectional") else 3
    rule = {"pattern": pattern, "window": window, "title": "t", "help": "h"}
    got = js.evaluate(_MASK, [rule, 11])
    np.testing.assert_array_equal(np.array(got["z"], dtype=bool), mask_matrix(pattern, window, 11, 11).numpy())
