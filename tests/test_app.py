"""The Explore page's handlers, called directly (no browser), plus the CLI and the named API.

The built-in "gpt" model is deterministic (seeded random weights), so every expectation is
recomputed here from the model itself and compared with what the page would show.
"""

from __future__ import annotations

import re
import socket

import numpy as np
import pytest
import torch

from archplay.app import tokens
from archplay.app.catalog import Catalog, UnknownModelError, describe
from archplay.app.explore import attention, generation, routing, run, sampling, scan
from archplay.app.main import build_app, parse_args, resolve_device
from archplay.models import BUILTIN_NAMES
from archplay.models.sampling import staged_distribution

TEXT = "Mia has a red ball."


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu")


@pytest.fixture()
def forward_calls(catalog, monkeypatch):
    """Count every forward pass of the built-in model (generation steps included)."""
    model = catalog.get("gpt").model
    calls = []
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def trace_of(catalog, text):
    entry = catalog.get("gpt")
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


# --------------------------------------------------------------------------- catalog and CLI


def test_registry_offers_the_builtins_and_starts_with_the_decoder(catalog):
    assert catalog.keys() == list(BUILTIN_NAMES) and catalog.default_key == "gpt"
    labels = dict((key, label) for label, key in catalog.choices())
    families = {"gpt": "decoder", "bert": "encoder", "t5": "encoder-decoder", "moe": "moe", "mamba": "ssm"}
    for key, family in families.items():
        assert f"— {family}," in labels[key]
        if not catalog.get(key).trained:
            assert labels[key].count("untrained") == 1


def test_describe_marks_untrained_once():
    class Cfg:
        name, trained, family, n_layer, n_head = "tiny", False, "decoder", 1, 2

    class M:
        config = Cfg

    assert describe(M) == "tiny (untrained) — decoder, 1 layer × 2 heads"


def test_a_folder_that_fails_is_reported_and_the_rest_still_load(tmp_path):
    logged = []
    reg = Catalog.from_names([str(tmp_path / "missing"), "nonsense"], log=logged.append)
    assert reg.keys() == list(BUILTIN_NAMES)
    assert len(reg.errors) == 2 and len(logged) == 2
    assert "no such folder" in reg.errors[0]
    assert "unknown model 'nonsense'" in reg.errors[1]


def test_unknown_key_is_a_readable_error(catalog):
    with pytest.raises(UnknownModelError, match="Unknown model 'nope'"):
        catalog.get("nope")


def test_cli_defaults_and_repeatable_model():
    args = parse_args([])
    assert (args.host, args.port, args.model, args.device) == ("127.0.0.1", 7860, [], "auto")
    args = parse_args(["--model", "a", "--model", "b", "--port", "9000", "--device", "cpu"])
    assert args.model == ["a", "b"] and args.port == 9000 and args.device == "cpu"
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_app_exposes_the_named_endpoints(catalog):
    demo = build_app(catalog)
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    assert {"analyse", "attention", "attention_kind", "distribution", "routing", "delta", "generate", "grid",
            "sample_once", "sample_many", "compare", "latency", "position", "lens", "card", "corpus_routing",
            "load_model", "embeddings", "sentences"} <= names
    params = {fn.api_name: [getattr(c, "label", None) for c in fn.inputs] for fn in demo.fns.values() if fn.api_name}
    # the original parameters first, in their order; new ones only appended
    assert params["analyse"][:7] == ["Model", "Text", "Layer", "Head", "Temperature", "Top-k", "Top-p"]
    assert params["attention"][1:3] == ["Layer", "Head"]
    assert params["distribution"][1:4] == ["Temperature", "Top-k", "Top-p"]


# --------------------------------------------------------------------------- analyse


def test_analyse_caches_the_trace_and_draws_the_chosen_layer_and_head(catalog):
    r = run.analyse(catalog, "gpt", TEXT, layer=2, head=3)
    out = trace_of(catalog, TEXT)
    a = r.analysis
    assert r.ok and r.status.startswith("✓")
    assert a.ids == catalog.get("gpt").tokenizer.encode(TEXT)
    assert a.labels == catalog.get("gpt").tokenizer.tokens(a.ids) and len(a.labels) == len(a.ids)
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
    assert ("untrained" in r.status.lower() or "random" in r.status) == (not catalog.get("gpt").trained)


def test_analyse_clamps_layer_and_head_into_the_model(catalog):
    r = run.analyse(catalog, "gpt", TEXT, layer=99, head=-5)
    assert (r.layer, r.head) == (3, 0)


def test_attention_slider_redraws_any_layer_and_head_from_the_cache(catalog):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    out = trace_of(catalog, TEXT)
    for layer, head in [(0, 0), (1, 2), (3, 3)]:
        fig = attention.attention_figure(a, layer, head)
        np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=np.float64),
                                   out.trace.attentions[layer][0, head].numpy(), atol=1e-7)  # fmt: skip
    with pytest.raises(ValueError, match="layer must be between 0 and 3"):
        attention.attention_figure(a, 4, 0)
    assert attention.attention_figure(None, 0, 0) is None


def test_tokens_strip_escapes_html_and_numbers_every_token(catalog):
    text = '<b>"x" & y</b>'
    r = run.analyse(catalog, "gpt", text)
    html = r.tokens_html
    assert "<b>" not in html and "&lt;" in html and "&amp;" in html and "&quot;" in html
    assert html.count('<span class="ap-tok') == len(r.analysis.ids)
    first, n = r.analysis.ids[0], len(r.analysis.ids)
    assert f'title="#0 · id {first}"' in html
    assert f'data-index="{n - 1}"' in html and f"{n} tokens" in html


@pytest.mark.parametrize("text", ["", "   \n ", None])
def test_empty_text_is_an_error_message_not_an_exception(catalog, text):
    r = run.analyse(catalog, "gpt", text)
    assert not r.ok and r.analysis is None
    assert r.status.startswith("✕") and "Type some text" in r.status
    assert r.attention is None and r.distribution is None


def test_unknown_model_is_an_error_message(catalog):
    r = run.analyse(catalog, "no-such-model", TEXT)
    assert not r.ok and "Unknown model" in r.status and "gpt" in r.status
    r = run.analyse(catalog, None, TEXT)
    assert not r.ok and "Choose a model" in r.status


def test_too_long_text_is_cut_to_the_context_with_a_visible_note(catalog):
    limit = catalog.get("gpt").config.max_seq_len
    text = "Mia runs. " * limit
    full = len(catalog.get("gpt").tokenizer.encode(text))
    assert full > limit
    r = run.analyse(catalog, "gpt", text)
    assert r.ok and len(r.analysis.ids) == limit and r.analysis.truncated_from == full
    assert "⚠" in r.status and f"at most {limit}" in r.status
    assert f"cut to the first {limit} of {full}" in r.tokens_html
    assert r.analysis.predict_at == limit - 1


# --------------------------------------------------------------------------- distribution


def test_distribution_follows_the_sliders_and_matches_staged_distribution(catalog):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    last = a.logits[-1]
    figs = {}
    for t, k, p in [(1.0, 0, 1.0), (0.3, 0, 1.0), (1.5, 10, 0.8), (0.0, 0, 1.0)]:
        fig, summary = sampling.distribution(catalog, a, t, k, p)
        ids, final = final_bars(fig)
        expected = staged_distribution(last, t, k, p).final[ids].double().numpy()
        np.testing.assert_allclose(final, expected, rtol=1e-6, atol=1e-9)
        assert "Most likely" in summary
        figs[t] = final
    assert not np.allclose(figs[1.0], figs[0.3])  # temperature changes the final bars
    assert figs[0.0].max() == 1.0  # greedy: all mass on one token
    # the raw bars ignore the settings
    raw_1 = trace_by_name(sampling.distribution(catalog, a, 1.0, 0, 1.0)[0], "raw").y
    raw_2 = trace_by_name(sampling.distribution(catalog, a, 0.3, 5, 0.5)[0], "raw").y
    np.testing.assert_array_equal(np.asarray(raw_1), np.asarray(raw_2))


def test_distribution_is_for_the_last_position(catalog):
    r = run.analyse(catalog, "gpt", TEXT)
    a = r.analysis
    assert a.predict_at == len(a.ids) - 1
    assert "position %d" % a.predict_at in r.distribution.layout.title.text
    assert 'class="ap-tok ap-focus"' in r.tokens_html


def test_distribution_rejects_settings_out_of_range(catalog):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    with pytest.raises(ValueError, match="top_p"):
        sampling.distribution(catalog, a, 1.0, 0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        sampling.distribution(catalog, a, -1.0, 0, 1.0)
    fig, msg = sampling.distribution(catalog, None)
    assert fig is None and "Run" in msg


def test_slider_handlers_never_call_the_model(catalog, forward_calls):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    assert len(forward_calls) == 1  # Run: exactly one traced forward pass
    for layer in range(4):
        for head in range(4):
            attention.attention_figure(a, layer, head)
    for t in np.linspace(0, 2, 9):
        for k in (0, 1, 50):
            for p in (0.1, 0.9, 1.0):
                sampling.distribution(catalog, a, float(t), k, p)
    assert len(forward_calls) == 1


# --------------------------------------------------------------------------- generate


def test_generate_streams_and_greedy_matches_model_generate(catalog):
    entry = catalog.get("gpt")
    steps = list(generation.generate(catalog, "gpt", TEXT, max_new_tokens=8, temperature=0.0))
    texts = [step.text for step in steps]
    assert len(steps) == 9  # one per token, then the final status
    assert all(len(a) <= len(b) for a, b in zip(texts, texts[1:]))
    assert steps[-1].status.startswith("✓") and "Generated 8 tokens" in steps[-1].status
    ids = torch.tensor([entry.tokenizer.encode(TEXT)])
    expected = entry.model.generate(ids, max_new_tokens=8, temperature=0.0)
    assert texts[-1] == entry.tokenizer.decode(expected[0].tolist())


def test_generate_is_reproducible_by_seed(catalog):
    def last_text(seed):
        return list(generation.generate(catalog, "gpt", TEXT, 6, 1.0, 0, 1.0, seed))[-1].text

    assert last_text(1) == last_text(1)
    assert last_text(1) != last_text(2) or last_text(1) != last_text(3)


@pytest.mark.parametrize(
    "model, text, message",
    [("gpt", "", "Type some text"), ("nope", TEXT, "Unknown model")],
)
def test_generate_reports_problems(catalog, model, text, message):
    steps = list(generation.generate(catalog, model, text, 4))
    assert len(steps) == 1 and steps[0].text == "" and message in steps[0].status


def test_generate_leaves_room_in_the_context(catalog):
    limit = catalog.get("gpt").config.max_seq_len
    steps = list(generation.generate(catalog, "gpt", "a" * limit, max_new_tokens=5, temperature=0.0))
    made = re.search(r"Generated (\d+) tokens?", steps[-1].status)
    # room for all 5 is left (the model may end its story sooner, at its end-of-text token)
    assert made and 1 <= int(made.group(1)) <= 5 and f"last {limit - 5} tokens" in steps[-1].status
    settings = list(generation.generate(catalog, "gpt", TEXT, 4, temperature=0.5, top_p=0.0))
    assert len(settings) == 1 and "top_p" in settings[0].status


# --------------------------------------------------------------------------- an encoder (BERT)


@pytest.fixture(scope="module")
def bert_registry(tmp_path_factory):
    from conftest import make_hf_model

    folder = tmp_path_factory.mktemp("ckpt") / "tiny-bert"
    make_hf_model("bert", folder)
    reg = Catalog.from_names([str(folder)])
    assert not reg.errors, reg.errors
    return reg, reg.keys()[-1]


def test_a_model_from_the_command_line_is_the_default(bert_registry, catalog):
    reg, key = bert_registry
    assert reg.keys() == [*BUILTIN_NAMES, key] and reg.default_key == key
    assert catalog.default_key == "gpt"
    from archplay.app.explore.page import default_text_for

    assert "[MASK]" in default_text_for(reg.get(key))
    assert default_text_for(catalog.get("gpt")) == tokens.DEFAULT_TEXT


def test_encoder_predicts_at_the_first_mask(bert_registry):
    reg, key = bert_registry
    entry = reg.get(key)
    assert entry.family == "encoder"
    r = run.analyse(reg, key, "the cat [MASK] on the [MASK] mat")
    a = r.analysis
    assert r.ok and a.predict_at == 3  # [CLS] the cat [MASK]
    assert not r.can_generate and "fill in blanks" in r.generate_note
    assert "bidirectional" in r.attention_help
    z = np.asarray(r.attention.data[0].z)
    assert np.all(z[np.triu_indices_from(z, k=1)] > 0)  # an encoder looks both ways
    ids, final = final_bars(r.distribution)
    np.testing.assert_allclose(final, staged_distribution(a.logits[3]).final[ids].numpy(), rtol=1e-6, atol=1e-9)
    fig, _ = sampling.distribution(reg, a, 0.5, 3, 1.0)
    ids, final = final_bars(fig)
    np.testing.assert_allclose(final, staged_distribution(a.logits[3], 0.5, 3).final[ids].numpy(), rtol=1e-6, atol=1e-9)


def test_encoder_adds_a_fill_in_the_blank_example(bert_registry, catalog):
    from archplay.app.explore.page import examples_for

    assert any("[MASK]" in e for e in examples_for(bert_registry[0]))
    assert not any("[MASK]" in e for e in examples_for(catalog))


def test_encoder_without_mask_asks_for_one_and_cannot_generate(bert_registry):
    reg, key = bert_registry
    r = run.analyse(reg, key, "the cat sat on the mat")
    assert r.ok and r.distribution is None and "Add \\[MASK\\]" in r.distribution_note  # brackets escaped: no link
    steps = list(generation.generate(reg, key, "the cat", 4))
    assert len(steps) == 1 and "Generate is off" in steps[0].status


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_the_session_cache_is_on_the_cpu_and_matches(catalog):
    cuda = Catalog.from_names([], device="cuda")
    r = run.analyse(cuda, "gpt", TEXT)
    assert r.analysis.logits.device.type == "cpu"
    assert all(a.device.type == "cpu" for a in r.analysis.attentions)
    cpu = run.analyse(catalog, "gpt", TEXT).analysis
    torch.testing.assert_close(r.analysis.logits, cpu.logits, atol=1e-3, rtol=1e-3)
    fig, _ = sampling.distribution(cuda, r.analysis, 0.7, 5, 0.9)
    assert fig is not None
    assert "Generated 4 tokens" in list(generation.generate(cuda, "gpt", TEXT, 4, 0.0))[-1].status


# --------------------------------------------------------------------------- the named API, as a script uses it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_named_endpoints_through_gradio_client(catalog):
    import json

    from gradio_client import Client

    from archplay.app.main import CSS, THEME

    demo = build_app(catalog)
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, theme=THEME, css=CSS)  # fmt: skip
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, strip, attention_fig, *_ = client.predict("gpt", TEXT, 1, 2, 1.0, 0, 1.0, api_name="/analyse")
        assert status.startswith("✓") and "ap-tok" in strip
        out = trace_of(catalog, TEXT)
        z = _decode(json.loads(attention_fig["plot"])["data"][0]["z"])
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

        text, status, coloured = client.predict("gpt", TEXT, 5, 0.0, 0, 1.0, 0, api_name="/generate")
        assert text.startswith(TEXT) and "Generated 5 tokens" in status and coloured.count("class=\"ap-gen\"") == 5

        # the encoder-decoder: translate, then switch to cross-attention by name
        status, *_ = client.predict("t5", TEXT, 0, 1, 1.0, 0, 1.0, "encoder", 0, 0, api_name="/analyse")
        assert "translated" in status
        _, t5_out = translate_in_test(catalog.get("t5"), TEXT)
        layer, fig, help_text = client.predict("cross", 2, 1, api_name="/attention_kind")
        z = _decode(json.loads(fig["plot"])["data"][0]["z"])
        np.testing.assert_allclose(z, t5_out.trace.cross_attentions[2][0, 1].numpy(), atol=1e-7)
        assert layer["value"] == 2 and "Cross-attention" in help_text  # a slider update: value and range

        # the mixture of experts: its routing by MoE layer, with no model run
        client.predict("moe", TEXT, 0, 0, 1.0, 0, 1.0, api_name="/analyse")
        chips, routing_fig, load_fig, note_text = client.predict(2, api_name="/routing")
        moe = catalog.get("moe")
        with torch.inference_mode():
            moe_out = moe.model(torch.tensor([moe.tokenizer.encode(TEXT)]), trace=True)
        marks = next(t for t in json.loads(routing_fig["plot"])["data"] if t.get("name") == "chosen")
        np.testing.assert_array_equal(_decode(marks["x"]), moe_out.trace.expert_indices[2][0].reshape(-1).numpy())
        assert "ap-exp" in chips and "routed slots" in note_text

        # the gpt again: a prediction at position 2, then 200 samples there, then a comparison
        client.predict("gpt", TEXT, 0, 0, 1.0, 0, 1.0, api_name="/analyse")
        fig, summary = client.predict(2, 1.0, 0, 1.0, api_name="/position")
        assert "(position 2)" in json.loads(fig["plot"])["layout"]["title"]["text"]
        hist, text = client.predict(1.0, 0, 1.0, 0, 7, api_name="/sample_many")
        assert "200 draws at position 2" in json.loads(hist["plot"])["layout"]["title"]["text"]
        status, *slots = client.predict(["gpt", "mamba"], TEXT, api_name="/compare")
        assert status.startswith("✓") and "gpt" in slots[0] and "mamba" in slots[4]  # title, view, prediction, surprisal
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


# --------------------------------------------------------------------------- the other families


@pytest.fixture()
def model_calls(catalog, monkeypatch):
    """Factory: model_calls("t5") -> a list that records every model call of that built-in
    (forward passes, generation, and an encoder-decoder's encode/decode halves)."""

    def watch(key):
        model = catalog.get(key).model
        calls = []
        for name in ("forward", "generate", "generate_stream", "encode", "decode"):
            if hasattr(model, name):
                original = getattr(model, name)

                def counting(*args, _name=name, _original=original, **kwargs):
                    calls.append(_name)
                    return _original(*args, **kwargs)

                monkeypatch.setattr(model, name, counting)
        return calls

    return watch


def translate_in_test(entry, text):
    """The greedy translation and the traced pass over it, computed here from the model itself."""
    from archplay.app.explore.translation import budget

    tok, model = entry.tokenizer, entry.model
    ids = torch.tensor([tok.encode(text)])
    eos = tok.eos_token_id
    with torch.inference_mode():
        new = model.generate(ids, max_new_tokens=budget(ids.shape[1]), temperature=0.0, eos_token_id=eos)
        decoder_input = torch.cat([torch.full((1, 1), model.config.decoder_start_token_id), new[:, :-1]], dim=1)
        out = model(ids, decoder_input_ids=decoder_input, trace=True)
    return new[0].tolist(), out


def z_of(fig):
    return np.asarray(fig.data[0].z, dtype=np.float64)


def test_t5_translates_and_shows_encoder_decoder_and_cross_attention(catalog):
    entry = catalog.get("t5")
    r = run.analyse(catalog, "t5", TEXT, layer=1, head=2, attention_kind="cross")
    a = r.analysis
    new, out = translate_in_test(entry, TEXT)
    assert r.ok and r.status.startswith("✓") and "translated it greedily" in r.status
    assert a.ids == entry.tokenizer.encode(TEXT)  # the source
    assert a.translation.ids == new and a.translation.text == entry.tokenizer.decode(new)
    assert r.attention_kind == "cross" and (r.layer, r.head) == (1, 2)
    # cross-attention: rows = target steps, columns = source tokens, the traced pass's values
    z = z_of(r.attention)
    assert z.shape == (len(new), len(a.ids))
    np.testing.assert_allclose(z, out.trace.cross_attentions[1][0, 2].numpy(), rtol=0, atol=1e-7)
    assert "Cross-attention: layer 1, head 2" in r.attention.layout.title.text
    assert list(r.attention.layout.xaxis.ticktext[:3]) == a.labels[:3]
    assert "Cross-attention" in r.attention_help
    # the other two kinds from the same Run
    enc = attention.attention_figure(a, 0, 3, "encoder")
    np.testing.assert_allclose(z_of(enc), out.trace.attentions[0][0, 3].numpy(), rtol=0, atol=1e-7)
    assert np.all(z_of(enc)[np.triu_indices(len(a.ids), 1)] > 0)  # the encoder looks both ways
    dec = attention.attention_figure(a, 2, 1, "decoder")
    np.testing.assert_allclose(z_of(dec), out.trace.decoder_attentions[2][0, 1].numpy(), rtol=0, atol=1e-7)
    assert np.all(z_of(dec)[np.triu_indices(len(new), 1)] == 0)  # causal
    assert a.translation.input_labels[0] == entry.tokenizer.tokens([entry.config.decoder_start_token_id])[0]
    assert a.translation.input_labels[1:] == entry.tokenizer.tokens(new[:-1])
    # the tokens strip shows the source and the translation
    assert r.tokens_html.count('<span class="ap-tok') == len(a.ids) + len(new)
    assert "Source" in r.tokens_html and "Translation" in r.tokens_html


def test_t5_distribution_is_the_decoders_choice_at_each_translation_step(catalog):
    r = run.analyse(catalog, "t5", TEXT, step=2)
    a = r.analysis
    new, out = translate_in_test(catalog.get("t5"), TEXT)
    assert r.step == 2 and a.predict_at == 2 and "Translation step 2" in r.distribution.layout.title.text
    for step in (0, 2, len(new) - 1):
        fig, summary = sampling.distribution(catalog, a, 0.7, 5, 1.0, step)
        ids, final = final_bars(fig)
        expected = staged_distribution(out.logits[0, step], 0.7, 5).final[ids].double().numpy()
        np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-7)
        assert f"Translation step {step}" in fig.layout.title.text and f"Step {step} of {len(new)}" in summary
        # greedy: the raw favourite at each step is the token the translation wrote there
        raw = trace_by_name(fig, "raw")
        assert int(raw.customdata[0][1]) == new[step]
    with pytest.raises(ValueError, match="step must be between 0 and"):
        sampling.distribution(catalog, a, 1.0, 0, 1.0, len(new))


def test_t5_layer_range_follows_the_attention_kind():
    from archplay.models.architectures.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
    from archplay.models.story.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    cfg = EncoderDecoderConfig.t5_tiny(
        vocab_size=tok.vocab_size, n_layer=2, n_decoder_layer=5, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )  # a decoder deeper than its encoder, as some T5 checkpoints have
    torch.manual_seed(0)
    reg = Catalog()
    reg.put("deep-t5", EncoderDecoder(cfg), tok)
    r = run.analyse(reg, "deep-t5", "a b c", layer=4, attention_kind="decoder")
    a = r.analysis
    assert r.layer == 4 and [a.layer_count(k) for k in ("encoder", "decoder", "cross")] == [2, 5, 5]
    assert a.n_layer == 5  # the default kind, cross-attention's (issue 14: T5 opens on the alignment)
    layer, n, fig, help_text = attention.attention_kind(a, "encoder", 4, 0)
    assert (layer, n) == (1, 2) and "Encoder self-attention: layer 1" in fig.layout.title.text
    assert "both ways" in help_text
    layer, n, fig, _ = attention.attention_kind(a, "cross", 4, 0)
    assert (layer, n) == (4, 5) and "Cross-attention: layer 4" in fig.layout.title.text
    with pytest.raises(ValueError, match="layer must be between 0 and 1"):
        attention.attention_figure(a, 4, 0, "encoder")
    with pytest.raises(ValueError, match="attention kind"):
        attention.attention_figure(a, 0, 0, "sideways")
    # analyse clamps the layer into the chosen kind's range
    assert run.analyse(reg, "deep-t5", "a b c", layer=4, attention_kind="encoder").layer == 1


def test_t5_redraws_never_call_the_model(catalog, model_calls):
    calls = model_calls("t5")
    a = run.analyse(catalog, "t5", TEXT).analysis
    assert calls.count("generate") == 1 and calls.count("forward") == 1  # translate, then trace it
    ran = len(calls)
    for kind in ("encoder", "decoder", "cross"):
        for layer in range(a.layer_count(kind)):
            attention.attention_figure(a, layer, 1, kind)
        attention.attention_kind(a, kind, 3, 0)
    for step in range(a.n_steps):
        sampling.distribution(catalog, a, 0.5, 3, 0.9, step)
    assert len(calls) == ran


def test_t5_generate_streams_a_translation(catalog):
    entry = catalog.get("t5")
    steps = list(generation.generate(catalog, "t5", TEXT, max_new_tokens=6, temperature=0.0))
    ids = torch.tensor([entry.tokenizer.encode(TEXT)])
    expected = entry.model.generate(ids, max_new_tokens=6, temperature=0.0, eos_token_id=entry.tokenizer.eos_token_id)
    assert steps[-1].text == entry.tokenizer.decode(expected[0].tolist())
    assert steps[-1].status.startswith("✓") and "Translated into" in steps[-1].status
    assert not steps[-1].text.startswith(TEXT)  # a translation, not a continuation
    assert len(steps) == expected.shape[1] + 1
    r = run.analyse(catalog, "t5", TEXT)
    assert r.can_generate and "translates it again" in r.generate_note


def test_t5_bad_input_is_a_message(catalog):
    from archplay.app.explore.translation import TRANSLATION_LIMIT

    r = run.analyse(catalog, "t5", "  ", attention_kind="cross")
    assert not r.ok and "Type some text" in r.status
    limit = catalog.get("t5").config.max_seq_len
    r = run.analyse(catalog, "t5", "ab" * limit, attention_kind="cross")
    assert r.ok and len(r.analysis.ids) == limit and "⚠" in r.status and f"first {limit}" in r.status
    assert r.analysis.n_steps <= TRANSLATION_LIMIT
    # an unknown kind from a script falls back to the default kind on Run: cross-attention
    assert run.analyse(catalog, "t5", TEXT, attention_kind="nope").attention_kind == "cross"


def test_moe_routing_shows_the_routers_probabilities_and_chosen_experts(catalog):
    from archplay.models.architectures.moe import expert_load

    entry = catalog.get("moe")
    r = run.analyse(catalog, "moe", TEXT, moe_layer=1)
    a = r.analysis
    ids = torch.tensor([entry.tokenizer.encode(TEXT)])
    with torch.inference_mode():
        out = entry.model(ids, trace=True)
    E, k = entry.config.n_experts, entry.config.top_k
    assert r.moe_layer == 1 and a.routing.n_layer == len(out.trace.router_logits)
    for layer in range(a.routing.n_layer):
        view = routing.view(a, layer)
        probs = torch.softmax(out.trace.router_logits[layer][0].float(), dim=-1).numpy()
        z = np.asarray(trace_by_name(view.heatmap, "router probability").z, dtype=np.float64)
        np.testing.assert_allclose(z, probs, rtol=0, atol=1e-7)
        np.testing.assert_allclose(z.sum(1), 1.0, atol=1e-6)
        marks = trace_by_name(view.heatmap, "chosen")
        chosen = out.trace.expert_indices[layer][0]  # (T, k)
        np.testing.assert_array_equal(np.asarray(marks.x), chosen.reshape(-1).numpy())
        np.testing.assert_array_equal(np.asarray(marks.y), np.repeat(np.arange(len(a.ids)), k))
        load = np.asarray(trace_by_name(view.load, "load").y, dtype=np.float64)
        np.testing.assert_allclose(load, expert_load(chosen, E).numpy(), rtol=0, atol=1e-7)
        assert load.sum() == pytest.approx(1.0)
        slots = [int(row[1]) for row in trace_by_name(view.load, "load").customdata]
        assert slots == torch.bincount(chosen.reshape(-1), minlength=E).tolist() and sum(slots) == len(a.ids) * k
        # the chips: one per token, coloured by the chosen expert with the largest probability
        first = [int(c[np.argmax(probs[t, c])]) for t, c in enumerate(chosen.numpy())]
        assert [int(e) for e in re.findall(r'data-expert="(\d+)"', view.chips)] == first
        assert f"layer {layer}" in view.heatmap.layout.title.text
    assert r.routing is not None and "routed slots" in r.routing.note
    with pytest.raises(ValueError, match="MoE layer must be between"):
        routing.view(a, a.routing.n_layer)
    assert routing.view(run.analyse(catalog, "gpt", TEXT).analysis, 0) is None


def test_moe_chips_escape_the_text(catalog):
    r = run.analyse(catalog, "moe", "<b>&</b>")
    chips = r.routing.chips
    assert "<b>" not in chips and "</b>" not in chips
    assert "&lt;" in chips and "&amp;" in chips and chips.count('class="ap-tok ap-exp"') == len(r.analysis.ids)


def test_moe_redraws_never_call_the_model(catalog, model_calls):
    calls = model_calls("moe")
    a = run.analyse(catalog, "moe", TEXT).analysis
    assert calls == ["forward"]
    for layer in range(a.routing.n_layer):
        routing.view(a, layer)
        attention.attention_figure(a, layer, 1)
    sampling.distribution(catalog, a, 0.3, 4, 0.8)
    assert calls == ["forward"]


def test_mamba_shows_hidden_attention_and_step_sizes_without_heads(catalog):
    entry = catalog.get("mamba")
    r = run.analyse(catalog, "mamba", TEXT, layer=2, head=3)
    a = r.analysis
    ids = torch.tensor([entry.tokenizer.encode(TEXT)])
    with torch.inference_mode():
        out = entry.model(ids, trace=True)
    assert r.ok and (r.layer, r.head) == (2, 0) and a.n_head == 0 and a.n_layer == entry.config.n_layer
    assert r.head_info.startswith("Mamba has no heads")
    assert "Hidden attention" in r.attention_help and "Step size" in r.attention_help
    for layer in range(a.n_layer):
        z = z_of(attention.attention_figure(a, layer, 0))
        np.testing.assert_allclose(z, out.trace.ssm_attention[layer][0].numpy(), rtol=0, atol=0)
        assert np.all(z[np.triu_indices(len(a.ids), 1)] == 0)
        delta = trace_by_name(scan.delta_figure(a, layer), "mean Δ")
        np.testing.assert_allclose(np.asarray(delta.y, dtype=np.float64),
                                   out.trace.ssm_delta[layer][0].mean(-1).numpy(), rtol=1e-6, atol=0)  # fmt: skip
    assert "hidden attention" in r.attention.layout.title.text
    np.testing.assert_allclose(np.asarray(trace_by_name(r.delta, "mean Δ").y, dtype=np.float64),
                               out.trace.ssm_delta[2][0].mean(-1).numpy(), rtol=1e-6)  # fmt: skip
    # the session keeps the mean of Δ, not the (T, D_inner) tensor
    assert a.scan.delta_mean[0].shape == (len(a.ids),)
    assert scan.delta_figure(run.analyse(catalog, "gpt", TEXT).analysis, 0) is None


def test_mamba_redraws_never_call_the_model(catalog, model_calls):
    calls = model_calls("mamba")
    a = run.analyse(catalog, "mamba", TEXT).analysis
    assert calls == ["forward"]
    for layer in range(a.n_layer):
        attention.attention_figure(a, layer, 0)
        scan.delta_figure(a, layer)
    sampling.distribution(catalog, a, 1.5, 0, 0.5)
    assert calls == ["forward"]


def test_long_text_for_a_long_context_model_is_cut_to_the_page_limit(catalog):
    limit = tokens.PAGE_MAX_TOKENS
    assert catalog.get("mamba").config.max_seq_len > limit
    r = run.analyse(catalog, "mamba", "a" * (limit + 40))
    assert r.ok and len(r.analysis.ids) == limit and "this page analyses at most" in r.status
    assert z_of(r.attention).shape == (limit, limit)


def test_page_updates_show_only_the_views_of_the_models_family(catalog):
    import gradio as gr

    from archplay.app.explore import page

    with gr.Blocks() as demo:
        ui = page.build(catalog, demo)
    assert set(page.analyse_outputs(ui)) == set(page.analyse_updates(ui, run.analyse(catalog, "gpt", TEXT)))

    def updates(key, **kw):
        return page.analyse_updates(ui, run.analyse(catalog, key, TEXT, **kw))

    t5 = updates("t5", attention_kind="cross")
    kind, translation, step = t5[ui.attention_kind], t5[ui.translation], t5[ui.step]
    assert kind["visible"] and kind["value"] == "cross"
    # the translation's text goes to the API's box; the page shows it in the tokens strip, with what
    # the invented language is (issue 14: it was never explained)
    assert translation["value"] == t5[ui.state].translation.text
    assert "language invented for the story world" in t5[ui.tokens] and "ga marks the subject" in t5[ui.tokens]
    assert step["visible"] and step["maximum"] == t5[ui.state].n_steps - 1
    assert not t5[ui.delta_plot]["visible"] and not t5[ui.routing_section]["visible"]
    head = updates("mamba")[ui.head]
    assert head["interactive"] is False and head["maximum"] >= 1  # a Gradio slider needs max > min
    assert head["info"].startswith("Mamba has no heads") and head["value"] == 0
    assert head["visible"] is False  # issue 14: Mamba showed a Head slider it has no use for
    mamba = updates("mamba")
    assert mamba[ui.delta_plot]["visible"] and mamba[ui.delta_plot]["value"] is not None
    assert not mamba[ui.routing_section]["visible"]
    moe = updates("moe")
    assert moe[ui.routing_section]["visible"] and not moe[ui.attention_kind]["visible"]
    assert not moe[ui.translation]["visible"]
    assert moe[ui.moe_layer]["maximum"] == catalog.get("moe").config.n_layer - 1
    gpt = updates("gpt")
    assert gpt[ui.head]["interactive"] is True and gpt[ui.head]["info"] == attention.HEAD_INFO
    # an error clears the drawings and the state
    bad = page.analyse_updates(ui, run.analyse(catalog, "moe", ""))
    assert bad[ui.state] is None and bad[ui.routing_plot] is None and "Type some text" in bad[ui.status]

    # the page's Run: numbers for the page's script instead of figures; the vocabulary once per model
    def page_run(key, previous=None):
        return page.run_updates(ui, catalog, run.analyse(catalog, key, TEXT, draw=False), previous)

    first = page_run("gpt")
    assert set(first) == set(page.run_outputs(ui)) and ui.attention_plot not in first
    assert first[ui.payload]["dist"]["pos"] == len(first[ui.state].ids) - 1
    assert len(first[ui.vocab]["labels"]) == catalog.get("gpt").config.vocab_size
    again = page_run("gpt", previous=first[ui.state])
    assert again[ui.vocab] == {"__type__": "update"}  # the same model: its labels are not sent again
    assert page_run("bert", previous=first[ui.state])[ui.vocab]["model"] == "bert"
