"""The "Inside a step" tab, issue 16 item 2: a mixture of experts' gate and Mamba's selective scan at one
token. The figures carry gate_steps' and scan_steps' own numbers, the tab's handlers serve the built-in
moe and mamba (and a model whose first layer is dense, with a shared expert), and bad input gets a
sentence. The browser case is in test_steps_view16.py (it shares that file's server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_contract import _tiny

from archplay.app import steps as tab
from archplay.app.catalog import Catalog
from archplay.app.explore import run
from archplay.models import gate_steps, scan_steps
from archplay.models.architectures.moe import MoEConfig, MoEDecoder
from archplay.models.story.tokenizer import ByteTokenizer
from archplay.viz.steps import MAX_CHANNELS, gate_figure, scan_channels, scan_figure

TEXT = "Mia has a red ball. She throws the ball to Tom. Then Tom"
CLOSE = dict(atol=1e-6, rtol=1e-6)


def trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def z(fig, name: str) -> np.ndarray:
    return np.asarray(trace(fig, name).z, dtype=np.float64)


def assert_gate_holds(g, fig):
    """Every number the gate figure shows is the GateSteps field it stands for."""
    E = len(g.logits)
    for name in ("logits", "probs", "expert_norms"):
        np.testing.assert_allclose(np.asarray(trace(fig, name).x, dtype=float), getattr(g, name).numpy(), **CLOSE)
        assert list(trace(fig, name).y) == list(range(E))
    weights = trace(fig, "weights")
    assert list(weights.y) == list(g.chosen)
    np.testing.assert_allclose(np.asarray(weights.x, dtype=float), g.weights.numpy(), **CLOSE)
    assert sorted(trace(fig, "not run").y) == sorted(set(range(E)) - set(g.chosen))
    for j, e in enumerate(g.chosen):  # the weighted sum's parts, then the sum
        part = (g.weights[j] * g.expert_outputs[e]).numpy()
        np.testing.assert_allclose(z(fig, f"expert {e} weighted")[0], part, atol=1e-5, rtol=1e-5)
    if g.shared_gate is None:
        assert "shared expert gated" not in [t.name for t in fig.data]
    else:
        np.testing.assert_allclose(z(fig, "shared expert gated")[0], (g.shared_gate * g.shared_output).numpy(),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(z(fig, "output")[0], g.output.numpy(), **CLOSE)
    parts = [z(fig, t.name)[0] for t in fig.data if t.name.endswith(" weighted") or t.name == "shared expert gated"]
    np.testing.assert_allclose(np.sum(parts, axis=0), z(fig, "output")[0], atol=1e-4)  # the strips add up


def assert_scan_holds(s, fig, channels=None):
    """Every number the scan figure shows is the ScanSteps field it stands for, on the figure's channels."""
    ch = list(fig.layout.meta["channels"])
    assert ch == (list(scan_channels(s)) if channels is None else list(channels))
    for name in ("u", "delta", "readout", "skip", "y", "gate"):
        np.testing.assert_allclose(z(fig, name)[:, 0], getattr(s, name)[ch].numpy(), **CLOSE)
    np.testing.assert_allclose(z(fig, "y_gated")[:, 0], (s.y * s.gate)[ch].numpy(), atol=1e-6)
    for name in ("A_bar", "h_prev", "B_bar_u", "h"):
        np.testing.assert_allclose(z(fig, name), getattr(s, name)[ch].numpy(), **CLOSE)
    for name in ("B", "C"):
        np.testing.assert_allclose(np.asarray(trace(fig, name).y, dtype=float), getattr(s, name).numpy(), **CLOSE)
    row = np.asarray(trace(fig, "hidden attention").y, dtype=float)
    np.testing.assert_allclose(row, s.hidden_attention[: s.token + 1].numpy(), **CLOSE)
    assert list(trace(fig, "hidden attention").x) == list(range(s.token + 1))
    # the arithmetic the hovers state: h = Ā ⊙ hₜ₋₁ + B̄u, y = h·C + D·u
    np.testing.assert_allclose(z(fig, "h"), z(fig, "A_bar") * z(fig, "h_prev") + z(fig, "B_bar_u"), atol=1e-6)
    np.testing.assert_allclose(z(fig, "y")[:, 0], z(fig, "readout")[:, 0] + z(fig, "skip")[:, 0], atol=1e-5)


def _ids(model, T=9):
    return torch.randint(3, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(2))


# --------------------------------------------------------------------------- the figures


@pytest.mark.parametrize("shared,normalise", [(False, True), (True, True), (False, False)])
def test_the_gate_figure_holds_gate_steps_numbers(shared, normalise):
    torch.manual_seed(0)
    model = MoEDecoder(MoEConfig.mixtral_tiny(n_layer=2, d_shared_expert=24 if shared else None,
                                              normalize_top_k=normalise))  # fmt: skip
    ids = _ids(model)
    labels = [f"t{j}" for j in range(ids.shape[1])]
    for layer, token in [(0, 0), (1, 6)]:
        g = gate_steps(model, ids, layer, token)
        fig = gate_figure(g, labels)
        assert_gate_holds(g, fig)
        title = fig.layout.title.text
        assert f"Layer {layer}, token {token} ‘t{token}’" in title and "softmax over all 4 experts (float32)" in title
        headers = [a.text for a in fig.layout.annotations]
        if normalise:  # "top-2 → renormalised: 0.62 + 0.38 = 1"
            w = g.weights.tolist()
            assert f"<b>top-2 → renormalised</b><br>{w[0]:.2f} + {w[1]:.2f} = 1" in headers
            assert "→ renormalise →" in title
        else:
            assert any("(not renormalised)" in h for h in headers) and "renormalise" not in title
        assert ("+ g·shared(x)" in title) == shared


def test_the_gate_figure_writes_its_numbers_and_greys_what_did_not_run():
    model = _tiny("mixtral-style")
    g = gate_steps(model, _ids(model), 1, 4)
    fig = gate_figure(g, ["<b>"] * 4 + ["a&b"] * 5, expert_names=["<i>e0</i>", "e1", "e2", "e3"])
    assert list(trace(fig, "probs").text) == [f"{p:.2f}" for p in g.probs.tolist()]
    assert list(trace(fig, "weights").text) == [f"{w:.2f}" for w in g.weights.tolist()]
    unchosen = [e for e in range(4) if e not in g.chosen]
    norms = list(trace(fig, "expert_norms").text)
    assert all(norms[e].endswith("· not run") for e in unchosen) and not any(norms[e].endswith("run") for e in g.chosen)
    assert list(trace(fig, "not run").text) == ["not run"] * len(unchosen)
    shapes = list(trace(fig, "expert_norms").marker.pattern.shape)
    assert [shapes[e] for e in unchosen] == ["/"] * len(unchosen) and all(shapes[e] == "" for e in g.chosen)
    colours = list(trace(fig, "probs").marker.color)
    assert len({colours[e] for e in unchosen}) == 1 and colours[g.chosen[0]] != colours[unchosen[0]]
    title, ticks = fig.layout.title.text, list(fig.layout.yaxis.ticktext)
    assert "token 4 ‘a&amp;b’" in title and "&lt;i&gt;e0&lt;/i&gt;" in ticks[0] and "<i>" not in " ".join(ticks)
    assert trace(fig, "logits").customdata[0].startswith("&lt;i&gt;e0&lt;/i&gt;")


def test_the_gate_figure_scales_to_many_experts():
    torch.manual_seed(0)
    model = MoEDecoder(MoEConfig.mixtral_tiny(n_layer=1, n_experts=60, top_k=4))
    g = gate_steps(model, _ids(model), 0, 3)
    fig = gate_figure(g, [str(j) for j in range(9)])
    assert_gate_holds(g, fig)
    assert trace(fig, "probs").text is None  # 9-px rows: the numbers are in the hover
    assert "4 weights, sum = 1" in " ".join(a.text for a in fig.layout.annotations)
    assert fig.layout.height <= 1000 and set(g.chosen) <= set(fig.layout.yaxis.tickvals)


def test_the_scan_figure_holds_scan_steps_numbers():
    model = _tiny("mamba-style")
    ids = _ids(model)
    labels = [f"t{j}" for j in range(ids.shape[1])]
    for layer, token in [(0, 0), (1, 5)]:
        s = scan_steps(model, ids, layer, token)
        fig = scan_figure(s, labels)
        assert_scan_holds(s, fig)
        assert len(fig.layout.meta["channels"]) == min(len(s.delta), MAX_CHANNELS)
        title = fig.layout.title.text
        assert (
            f"Layer {layer}, token {token} ‘t{token}’" in title
            and "Ā = exp(Δ·A)" in title
            and "hₜ = Ā ⊙ hₜ₋₁ + B̄u" in title
        )
    chosen = [3, 1, 7]  # any channels, drawn in the order given
    fig = scan_figure(s, labels, channels=chosen)
    assert_scan_holds(s, fig, chosen)
    assert "3 of the" in fig.layout.title.text


def test_the_scan_figure_shows_64_channels_of_a_wide_model_and_says_which():
    from archplay.models import load

    model, tok = load("mamba", device="cpu")
    ids = torch.tensor([tok.encode(TEXT)])
    s = scan_steps(model, ids, 2, 9)
    Di = len(s.delta)
    fig = scan_figure(s, tok.tokens(ids[0].tolist()))
    ch = list(fig.layout.meta["channels"])
    assert Di > MAX_CHANNELS and len(ch) == MAX_CHANNELS == len(set(ch)) and ch == sorted(ch)
    widest = int(s.delta.argmax())
    assert widest in ch  # the largest Δ is always shown (the summary names it)
    sent = (s.y * s.gate).abs()
    order = torch.argsort(sent, descending=True, stable=True).tolist()  # the most sent into W_out, and Δ's largest
    top = order[: MAX_CHANNELS - 1]
    assert set(ch) == set(top) | {widest if widest not in top else order[MAX_CHANNELS - 1]}
    assert_scan_holds(s, fig)
    assert f"{MAX_CHANNELS} of the {Di} channels" in fig.layout.title.text and f"▸ {widest}" in fig.layout.title.text
    assert f"<b>▸ {widest}</b>" in list(fig.layout.yaxis.ticktext)
    assert trace(fig, "h").text is None and fig.layout.height <= 1300
    with pytest.raises(ValueError, match="channels must be between"):
        scan_figure(s, ["x"] * 20, channels=[Di])


def test_the_figures_are_valid_plotly(monkeypatch):
    model = _tiny("mixtral-style")
    g = gate_steps(model, _ids(model), 1, 2)
    mamba = _tiny("mamba-style")
    s = scan_steps(mamba, _ids(mamba), 1, 4)
    labels = [str(j) for j in range(9)]
    build = lambda: [gate_figure(g, labels), scan_figure(s, labels)]  # noqa: E731
    fast = build()
    monkeypatch.setenv("ARCHPLAY_VALIDATE_FIGURES", "1")
    checked = build()

    def plain(fig):
        return json.loads(fig.to_json(), parse_float=lambda x: round(float(x), 12))

    for a, b in zip(fast, checked):
        assert plain(a) == plain(b)


# --------------------------------------------------------------------------- the tab's handlers


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    reg = Catalog.from_names([], device="cpu")
    torch.manual_seed(0)
    mixed = MoEDecoder(MoEConfig.mixtral_tiny(vocab_size=ByteTokenizer().vocab_size, n_layer=3, d_shared_expert=24,
                                              moe_layers=[False, True, True]))  # fmt: skip
    reg.put("mixed", mixed.eval(), ByteTokenizer())  # a dense first layer and a shared expert (Qwen2-MoE-like)
    return reg


@pytest.fixture(scope="module")
def runs(catalog):
    out = {}
    for key in ("moe", "mamba", "gpt", "mixed"):
        r = run.analyse(catalog, key, TEXT)
        assert r.ok, r.status
        out[key] = r.analysis
    return out


def test_the_gate_at_the_query_token_of_a_moe_run(catalog, runs):
    a = runs["moe"]
    menu = tab.gate_layers(a)
    assert [b for _, b in menu] == a.routing.blocks == [0, 1, 2, 3] and menu[0][0] == "layer 0"
    token = a.labels.index("␣ball")  # 5
    v = tab.gate_view(catalog, a, 3, token)
    entry = catalog.get("moe")
    g = gate_steps(entry.model, torch.tensor([a.ids]), 3, token)
    assert_gate_holds(g, v.figure)
    np.testing.assert_allclose(g.probs.numpy(), a.routing.probs[3][token].numpy(), atol=1e-5)  # the Run's routing
    assert g.chosen == a.routing.chosen[3][token].tolist()
    w, n = g.weights.tolist(), g.expert_norms.tolist()
    first, second = g.chosen
    assert v.summary.startswith(f"✓ Token {token} ‘␣ball’ goes to experts {first} (**{w[0]:.2f}**) and "
                                f"{second} (**{w[1]:.2f}**)")  # fmt: skip
    big = max(g.chosen, key=lambda e: n[e])
    assert f"expert {big}'s output is the largest of the chosen (norm {n[big]:.3g})" in v.summary
    p = g.chosen_probs.tolist()
    assert f"renormalised over the 2: {p[0]:.2f} / {sum(p):.2f} = {w[0]:.2f}" in v.summary
    assert f"norm {float(g.output.norm()):.3g}" in v.summary and "Only 2 of the 4 experts ran" in v.summary
    assert tab.gate_view(catalog, a, None, 0).figure.layout.title.text.startswith("Layer 3, token 0")  # default: last
    assert tab.gate_view(catalog, a, "1", "Mia").figure.layout.title.text.startswith("Layer 1, token 1 ‘Mia’")


def test_only_the_layers_that_route_have_a_gate(catalog, runs):
    a = runs["mixed"]
    assert [b for _, b in tab.gate_layers(a)] == [1, 2]
    v = tab.gate_view(catalog, a, 0, 3)
    assert v.figure is None and "layer 0 has no router: the layers that route are 1, 2" in v.summary
    v = tab.gate_view(catalog, a, 2, 3)
    g = gate_steps(catalog.get("mixed").model, torch.tensor([a.ids]), 2, 3)
    assert_gate_holds(g, v.figure)
    assert f"+ {g.shared_gate:.2f} × the shared expert(x)" in v.summary


def test_the_scan_at_a_token_of_a_mamba_run(catalog, runs):
    a = runs["mamba"]
    token = len(a.ids) - 1
    v = tab.scan_view(catalog, a, 4, token)
    s = scan_steps(catalog.get("mamba").model, torch.tensor([a.ids]), 4, token)
    assert_scan_holds(s, v.figure)
    np.testing.assert_allclose(s.hidden_attention.numpy(), a.scan.hidden_attention[4][token].numpy(), atol=1e-5)
    hi = int(s.delta.argmax())
    keep = float(s.A_bar[hi].mean())
    assert v.summary.startswith(f"✓ Token {token} ‘{a.labels[token]}’: Δ is largest on channel {hi} "
                                f"(**{float(s.delta[hi]):.3g}**): the state there keeps {100 * keep:.0f}% of its past")  # fmt: skip
    assert (
        f"forgets {100 * (1 - keep):.0f}%" in v.summary and f"smallest on channel {int(s.delta.argmin())}" in v.summary
    )
    j = int(s.hidden_attention[:token].argmax())
    assert f"‘{a.labels[j]}’ (token {j}) counts most ({float(s.hidden_attention[j]):.3g}" in v.summary
    first = tab.scan_view(catalog, a, None, 0)
    assert first.figure.layout.title.text.startswith(f"Layer {a.scan.n_layer - 1}, token 0")
    assert "the state starts at 0, so h = B̄u" in first.summary and "counts most" not in first.summary


def test_which_sections_a_run_gets(catalog, runs):
    """A routing Run: attention and the gate; a scan Run: the scan, no attention; others: attention only."""
    assert tab.controls(catalog, runs["moe"]) is not None and tab.gate_layers(runs["moe"])
    assert tab.controls(catalog, runs["mamba"]) is None and not tab.gate_layers(runs["mamba"])
    assert tab.gate_layers(runs["gpt"]) == [] and tab.gate_layers(None) == []
    assert "no router" in tab.gate_view(catalog, runs["mamba"], 0, 0).summary
    assert "no selective scan" in tab.scan_view(catalog, runs["moe"], 0, 0).summary
    assert "no router" in tab.gate_view(catalog, runs["gpt"], 0, 0).summary
    for view in (tab.gate_view, tab.scan_view):
        assert view(catalog, None).summary == "ℹ " + tab.RUN_FIRST
    assert tab.default_token(runs["mamba"]) == len(runs["mamba"].ids) - 1


@pytest.mark.parametrize("view,args,match", [
    ("gate", (9, 0), "layer 9 has no router"), ("gate", ("x", 0), "layer must be a whole number"),
    ("gate", (0, 99), "token must be between 0 and"), ("gate", (0, None), "choose a token"),
    ("gate", (0, "<img src=x>"), "&lt;img"), ("gate", (0, "ball"), "got 'ball'"),
    ("scan", (6, 0), "layer must be between 0 and 5, got 6"), ("scan", (-1, 0), "got -1"),
    ("scan", ("two", 0), "layer must be a whole number"), ("scan", (0, -3), "token must be between"),
    ("scan", (0, ""), "choose a token"), ("scan", (0, "<img src=x>"), "&lt;img"),
])  # fmt: skip
def test_bad_input_gets_a_sentence(catalog, runs, view, args, match):
    key = "moe" if view == "gate" else "mamba"
    v = getattr(tab, f"{view}_view")(catalog, runs[key], *args)
    assert v.figure is None and v.summary.startswith("✕") and match in v.summary, v.summary
    assert "<img" not in v.summary


def test_html_in_the_text_is_escaped(catalog):
    for key, view in (("moe", tab.gate_view), ("mamba", tab.scan_view)):
        a = run.analyse(catalog, key, "Mia has <b>a</b> red & ball").analysis
        i = a.labels.index(">")
        v = view(catalog, a, None, i)
        assert f"token {i} ‘&gt;’" in v.figure.layout.title.text and "‘&gt;’" in v.summary
        assert "<b>a" not in v.summary and "‘>’" not in v.summary
    hover = list(trace(v.figure, "hidden attention").customdata)  # the scan's row: tokens 0..i
    assert hover[i] == "&gt;" and "&lt;" in hover and not any("<" in h for h in hover)


def test_the_figures_take_plain_arrays_and_leave_out_what_is_missing():
    """Duck-typed steps of numpy arrays; a scan without its hidden-attention row has no panel for it."""
    from types import SimpleNamespace

    mamba = _tiny("mamba-style")
    s = scan_steps(mamba, _ids(mamba), 1, 4)
    plain = SimpleNamespace(**{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in vars(s).items()})
    plain.hidden_attention = None
    fig = scan_figure(plain, [str(j) for j in range(9)])
    assert "hidden attention" not in [t.name for t in fig.data] and "xaxis7" not in fig.layout.to_plotly_json()
    np.testing.assert_allclose(z(fig, "h"), s.h[fig.layout.meta["channels"]].numpy(), **CLOSE)
    moe = _tiny("mixtral-style")
    g = gate_steps(moe, _ids(moe), 0, 1)
    plain = SimpleNamespace(**{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in vars(g).items()})
    assert_gate_holds(g, gate_figure(plain, [str(j) for j in range(9)]))
    with pytest.raises(ValueError, match="3 expert names for 4 experts"):
        gate_figure(g, ["a"] * 9, expert_names=["a", "b", "c"])
