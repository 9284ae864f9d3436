"""The Explore page's handlers, called directly (no browser), plus the CLI and the named API.

The built-in "gpt" model is deterministic (seeded random weights), so every expectation is
recomputed here from the model itself and compared with what the page would show.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from app import handlers
from app.main import build_app, parse_args, resolve_device
from models import BUILTIN_NAMES
from app.registry import Registry, UnknownModelError, describe
from models.sampling import staged_distribution

TEXT = "Mia has a red ball."


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_names([], device="cpu")


@pytest.fixture()
def forward_calls(registry, monkeypatch):
    """Count every forward pass of the built-in model (generation steps included)."""
    model = registry.get("gpt").model
    calls = []
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def trace_of(registry, text):
    entry = registry.get("gpt")
    ids = torch.tensor([entry.tokenizer.encode(text)])
    with torch.inference_mode():
        return entry.model(ids, trace=True)


def trace_by_name(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def final_bars(fig):
    """(token ids, probabilities) of the distribution figure's "final" bars."""
    bars = trace_by_name(fig, "final")
    ids = np.array([int(row[1]) for row in bars.customdata])
    return ids, np.asarray(bars.y, dtype=np.float64)


# --------------------------------------------------------------------------- registry and CLI


def test_registry_offers_the_builtins_and_starts_with_the_decoder(registry):
    assert registry.keys() == list(BUILTIN_NAMES) and registry.default_key == "gpt"
    labels = dict((key, label) for label, key in registry.choices())
    families = {"gpt": "decoder", "bert": "encoder", "t5": "encoder-decoder", "moe": "moe", "mamba": "ssm"}
    for key, family in families.items():
        assert f"— {family}," in labels[key]
        if not registry.get(key).trained:
            assert labels[key].count("untrained") == 1


def test_describe_marks_untrained_once():
    class Cfg:
        name, trained, family, n_layer, n_head = "tiny", False, "decoder", 1, 2

    class M:
        config = Cfg

    assert describe(M) == "tiny (untrained) — decoder, 1 layer × 2 heads"


def test_a_folder_that_fails_is_reported_and_the_rest_still_load(tmp_path):
    logged = []
    reg = Registry.from_names([str(tmp_path / "missing"), "nonsense"], log=logged.append)
    assert reg.keys() == list(BUILTIN_NAMES)
    assert len(reg.errors) == 2 and len(logged) == 2
    assert "no such folder" in reg.errors[0]
    assert "unknown model 'nonsense'" in reg.errors[1]


def test_unknown_key_is_a_readable_error(registry):
    with pytest.raises(UnknownModelError, match="Unknown model 'nope'"):
        registry.get("nope")


def test_cli_defaults_and_repeatable_model():
    args = parse_args([])
    assert (args.host, args.port, args.model, args.device) == ("127.0.0.1", 7860, [], "auto")
    args = parse_args(["--model", "a", "--model", "b", "--port", "9000", "--device", "cpu"])
    assert args.model == ["a", "b"] and args.port == 9000 and args.device == "cpu"
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_app_exposes_the_named_endpoints(registry):
    demo = build_app(registry)
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    assert {"analyse", "attention", "distribution", "generate"} <= names


# --------------------------------------------------------------------------- analyse


def test_analyse_caches_the_trace_and_draws_the_chosen_layer_and_head(registry):
    r = handlers.analyse(registry, "gpt", TEXT, layer=2, head=3)
    out = trace_of(registry, TEXT)
    a = r.analysis
    assert r.ok and r.status.startswith("✓")
    assert a.ids == registry.get("gpt").tokenizer.encode(TEXT)
    assert a.labels[:3] == ["M", "i", "a"] and len(a.labels) == len(a.ids)
    assert (a.n_layer, a.n_head) == (4, 4) and (r.layer, r.head) == (2, 3)
    # the cached attention and logits are the model's, on the CPU, one batch row
    for cached, traced in zip(a.attentions, out.trace.attentions):
        assert cached.device.type == "cpu"
        torch.testing.assert_close(cached, traced[0], rtol=0, atol=0)
    torch.testing.assert_close(a.logits, out.logits[0], rtol=0, atol=0)
    # the heatmap shows exactly layer 2, head 3
    z = np.asarray(r.attention.data[0].z, dtype=np.float64)
    np.testing.assert_allclose(z, out.trace.attentions[2][0, 3].numpy(), rtol=0, atol=1e-7)
    assert "Layer 2, head 3" in r.attention.layout.title.text
    assert np.all(np.triu(z, k=1) == 0)  # causal: nothing above the diagonal
    assert "upper triangle" in r.attention_help
    assert r.can_generate and r.generate_note == ""
    assert "untrained" in r.status.lower() or "random" in r.status


def test_analyse_clamps_layer_and_head_into_the_model(registry):
    r = handlers.analyse(registry, "gpt", TEXT, layer=99, head=-5)
    assert (r.layer, r.head) == (3, 0)


def test_attention_slider_redraws_any_layer_and_head_from_the_cache(registry):
    a = handlers.analyse(registry, "gpt", TEXT).analysis
    out = trace_of(registry, TEXT)
    for layer, head in [(0, 0), (1, 2), (3, 3)]:
        fig = handlers.attention_figure(a, layer, head)
        np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=np.float64),
                                   out.trace.attentions[layer][0, head].numpy(), atol=1e-7)  # fmt: skip
    with pytest.raises(ValueError, match="layer must be between 0 and 3"):
        handlers.attention_figure(a, 4, 0)
    assert handlers.attention_figure(None, 0, 0) is None


def test_tokens_strip_escapes_html_and_numbers_every_token(registry):
    text = '<b>"x" & y</b>'
    r = handlers.analyse(registry, "gpt", text)
    html = r.tokens_html
    assert "<b>" not in html and "&lt;" in html and "&amp;" in html and "&quot;" in html
    assert html.count('<span class="ap-tok') == len(r.analysis.ids)
    assert 'title="#0 · id 60"' in html  # '<' is byte 60
    assert 'data-index="13"' in html and "14 tokens" in html


@pytest.mark.parametrize("text", ["", "   \n ", None])
def test_empty_text_is_an_error_message_not_an_exception(registry, text):
    r = handlers.analyse(registry, "gpt", text)
    assert not r.ok and r.analysis is None
    assert r.status.startswith("✕") and "Type some text" in r.status
    assert r.attention is None and r.distribution is None


def test_unknown_model_is_an_error_message(registry):
    r = handlers.analyse(registry, "no-such-model", TEXT)
    assert not r.ok and "Unknown model" in r.status and "gpt" in r.status
    r = handlers.analyse(registry, None, TEXT)
    assert not r.ok and "Choose a model" in r.status


def test_too_long_text_is_cut_to_the_context_with_a_visible_note(registry):
    limit = registry.get("gpt").config.max_seq_len
    r = handlers.analyse(registry, "gpt", "ab" * limit)
    assert r.ok and len(r.analysis.ids) == limit and r.analysis.truncated_from == 2 * limit
    assert "⚠" in r.status and f"at most {limit}" in r.status
    assert f"cut to the first {limit} of {2 * limit}" in r.tokens_html
    assert r.analysis.predict_at == limit - 1


# --------------------------------------------------------------------------- distribution


def test_distribution_follows_the_sliders_and_matches_staged_distribution(registry):
    a = handlers.analyse(registry, "gpt", TEXT).analysis
    last = a.logits[-1]
    figs = {}
    for t, k, p in [(1.0, 0, 1.0), (0.3, 0, 1.0), (1.5, 10, 0.8), (0.0, 0, 1.0)]:
        fig, summary = handlers.distribution(registry, a, t, k, p)
        ids, final = final_bars(fig)
        expected = staged_distribution(last, t, k, p).final[ids].double().numpy()
        np.testing.assert_allclose(final, expected, rtol=1e-6, atol=1e-9)
        assert "Most likely" in summary
        figs[t] = final
    assert not np.allclose(figs[1.0], figs[0.3])  # temperature changes the final bars
    assert figs[0.0].max() == 1.0  # greedy: all mass on one token
    # the raw bars ignore the settings
    raw_1 = trace_by_name(handlers.distribution(registry, a, 1.0, 0, 1.0)[0], "raw").y
    raw_2 = trace_by_name(handlers.distribution(registry, a, 0.3, 5, 0.5)[0], "raw").y
    np.testing.assert_array_equal(np.asarray(raw_1), np.asarray(raw_2))


def test_distribution_is_for_the_last_position(registry):
    r = handlers.analyse(registry, "gpt", TEXT)
    a = r.analysis
    assert a.predict_at == len(a.ids) - 1
    assert "position %d" % a.predict_at in r.distribution.layout.title.text
    assert 'class="ap-tok ap-focus"' in r.tokens_html


def test_distribution_rejects_settings_out_of_range(registry):
    a = handlers.analyse(registry, "gpt", TEXT).analysis
    with pytest.raises(ValueError, match="top_p"):
        handlers.distribution(registry, a, 1.0, 0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        handlers.distribution(registry, a, -1.0, 0, 1.0)
    fig, msg = handlers.distribution(registry, None)
    assert fig is None and "Run" in msg


def test_slider_handlers_never_call_the_model(registry, forward_calls):
    a = handlers.analyse(registry, "gpt", TEXT).analysis
    assert len(forward_calls) == 1  # Run: exactly one traced forward pass
    for layer in range(4):
        for head in range(4):
            handlers.attention_figure(a, layer, head)
    for t in np.linspace(0, 2, 9):
        for k in (0, 1, 50):
            for p in (0.1, 0.9, 1.0):
                handlers.distribution(registry, a, float(t), k, p)
    assert len(forward_calls) == 1


# --------------------------------------------------------------------------- generate


def test_generate_streams_and_greedy_matches_model_generate(registry):
    entry = registry.get("gpt")
    steps = list(handlers.generate(registry, "gpt", TEXT, max_new_tokens=8, temperature=0.0))
    texts = [t for t, _ in steps]
    assert len(steps) == 9  # one per token, then the final status
    assert all(len(a) <= len(b) for a, b in zip(texts, texts[1:]))
    assert steps[-1][1].startswith("✓") and "Generated 8 tokens" in steps[-1][1]
    ids = torch.tensor([entry.tokenizer.encode(TEXT)])
    expected = entry.model.generate(ids, max_new_tokens=8, temperature=0.0)
    assert texts[-1] == entry.tokenizer.decode(expected[0].tolist())


def test_generate_is_reproducible_by_seed(registry):
    def run(seed):
        return list(handlers.generate(registry, "gpt", TEXT, 6, 1.0, 0, 1.0, seed))[-1][0]

    assert run(1) == run(1)
    assert run(1) != run(2) or run(1) != run(3)


@pytest.mark.parametrize(
    "model, text, message",
    [("gpt", "", "Type some text"), ("nope", TEXT, "Unknown model")],
)
def test_generate_reports_problems(registry, model, text, message):
    steps = list(handlers.generate(registry, model, text, 4))
    assert len(steps) == 1 and steps[0][0] == "" and message in steps[0][1]


def test_generate_leaves_room_in_the_context(registry):
    limit = registry.get("gpt").config.max_seq_len
    steps = list(handlers.generate(registry, "gpt", "a" * limit, max_new_tokens=5, temperature=0.0))
    assert "Generated 5 tokens" in steps[-1][1] and f"last {limit - 5} tokens" in steps[-1][1]
    settings = list(handlers.generate(registry, "gpt", TEXT, 4, temperature=0.5, top_p=0.0))
    assert len(settings) == 1 and "top_p" in settings[0][1]


# --------------------------------------------------------------------------- an encoder (BERT)


@pytest.fixture(scope="module")
def bert_registry(tmp_path_factory):
    from conftest import make_hf_model

    folder = tmp_path_factory.mktemp("ckpt") / "tiny-bert"
    make_hf_model("bert", folder)
    reg = Registry.from_names([str(folder)])
    assert not reg.errors, reg.errors
    return reg, reg.keys()[-1]


def test_a_model_from_the_command_line_is_the_default(bert_registry, registry):
    reg, key = bert_registry
    assert reg.keys() == [*BUILTIN_NAMES, key] and reg.default_key == key
    assert registry.default_key == "gpt"
    from app.explore import default_text_for

    assert "[MASK]" in default_text_for(reg.get(key))
    assert default_text_for(registry.get("gpt")) == handlers.DEFAULT_TEXT


def test_encoder_predicts_at_the_first_mask(bert_registry):
    reg, key = bert_registry
    entry = reg.get(key)
    assert entry.family == "encoder"
    r = handlers.analyse(reg, key, "the cat [MASK] on the [MASK] mat")
    a = r.analysis
    assert r.ok and a.predict_at == 3  # [CLS] the cat [MASK]
    assert not r.can_generate and "fill in blanks" in r.generate_note
    assert "bidirectional" in r.attention_help
    z = np.asarray(r.attention.data[0].z)
    assert np.all(z[np.triu_indices_from(z, k=1)] > 0)  # an encoder looks both ways
    ids, final = final_bars(r.distribution)
    np.testing.assert_allclose(final, staged_distribution(a.logits[3]).final[ids].numpy(), rtol=1e-6, atol=1e-9)
    fig, _ = handlers.distribution(reg, a, 0.5, 3, 1.0)
    ids, final = final_bars(fig)
    np.testing.assert_allclose(final, staged_distribution(a.logits[3], 0.5, 3).final[ids].numpy(), rtol=1e-6, atol=1e-9)


def test_encoder_adds_a_fill_in_the_blank_example(bert_registry, registry):
    from app.explore import examples_for

    assert any("[MASK]" in e for e in examples_for(bert_registry[0]))
    assert not any("[MASK]" in e for e in examples_for(registry))


def test_encoder_without_mask_asks_for_one_and_cannot_generate(bert_registry):
    reg, key = bert_registry
    r = handlers.analyse(reg, key, "the cat sat on the mat")
    assert r.ok and r.distribution is None and "Add [MASK]" in r.distribution_note
    steps = list(handlers.generate(reg, key, "the cat", 4))
    assert len(steps) == 1 and "Generate is off" in steps[0][1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_the_session_cache_is_on_the_cpu_and_matches(registry):
    cuda = Registry.from_names([], device="cuda")
    r = handlers.analyse(cuda, "gpt", TEXT)
    assert r.analysis.logits.device.type == "cpu"
    assert all(a.device.type == "cpu" for a in r.analysis.attentions)
    cpu = handlers.analyse(registry, "gpt", TEXT).analysis
    torch.testing.assert_close(r.analysis.logits, cpu.logits, atol=1e-3, rtol=1e-3)
    fig, _ = handlers.distribution(cuda, r.analysis, 0.7, 5, 0.9)
    assert fig is not None
    assert "Generated 4 tokens" in list(handlers.generate(cuda, "gpt", TEXT, 4, 0.0))[-1][1]


# --------------------------------------------------------------------------- the named API, as a script uses it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_named_endpoints_through_gradio_client(registry):
    import json

    from gradio_client import Client

    from app.main import CSS, THEME

    demo = build_app(registry)
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, theme=THEME, css=CSS)  # fmt: skip
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, tokens, attention, *_ = client.predict("gpt", TEXT, 1, 2, 1.0, 0, 1.0, api_name="/analyse")
        assert status.startswith("✓") and "ap-tok" in tokens
        out = trace_of(registry, TEXT)
        z = _decode(json.loads(attention["plot"])["data"][0]["z"])
        np.testing.assert_allclose(z, out.trace.attentions[1][0, 2].numpy(), atol=1e-7)

        fig, summary = client.predict(0.5, 0, 1.0, api_name="/distribution")
        data = json.loads(fig["plot"])["data"]
        final = next(t for t in data if t["name"] == "final")
        ids = [int(row[1]) for row in final["customdata"]]
        expected = staged_distribution(out.logits[0, -1], 0.5).final[ids].numpy()
        np.testing.assert_allclose(_decode(final["y"]), expected, rtol=1e-6, atol=1e-9)

        head_fig = client.predict(3, 0, api_name="/attention")
        z = _decode(json.loads(head_fig["plot"])["data"][0]["z"])
        np.testing.assert_allclose(z, out.trace.attentions[3][0, 0].numpy(), atol=1e-7)

        text, status = client.predict("gpt", TEXT, 5, 0.0, 0, 1.0, 0, api_name="/generate")
        assert text.startswith(TEXT) and "Generated 5 tokens" in status
    finally:
        demo.close()


def _decode(value):
    """A plotly JSON array: a plain list, or a {"dtype", "bdata", "shape"} base64 typed array."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            arr = arr.reshape([int(s) for s in str(value["shape"]).split(",")])
        return arr.astype(np.float64)
    return np.asarray(value, dtype=np.float64)
