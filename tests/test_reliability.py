"""Bad input, faults and the server's safe defaults.

Every bad input gets a clear message on the page (here: the handler's status or note) and the
server keeps serving: after each case, a normal request still works. Faulty models (NaN logits,
an exception) show an error while the other models keep working. A name typed in the page can
only reach checkpoint folders inside the configured models directory.
"""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from conftest import make_hf_model

from archplay.app import tokens
from archplay.app.catalog import Catalog
from archplay.app.explore import generation, run, sampling
from archplay.app.main import host_warning, parse_args
from archplay.models import LoadError
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.story.tokenizer import ByteTokenizer

TEXT = "Mia has a red ball."


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu")


def still_serving(catalog: Catalog) -> None:
    r = run.analyse(catalog, "gpt", TEXT)
    assert r.ok and r.status.startswith("✓")


# --------------------------------------------------------------------------- bad text

ODD_TEXTS = {
    "emoji": "Mia 🎈 has a 🔴 ball 👍🏽.",
    "CJK": "米娅有一个红色的球。",
    "right-to-left": "مرحبا Mia שלום",
    "control characters": "Mia\x07 has\x1b[31m a\tball\r\n",
    "NUL bytes": "Mia\x00has\x00a ball",
    "combining marks": "Mi\u0301a has a ba\u0308ll",
    "lone surrogate": "Mia \ud800 ball",
}


@pytest.mark.parametrize("case", list(ODD_TEXTS))
@pytest.mark.parametrize("model", ["gpt", "bert", "t5", "moe", "mamba"])
def test_odd_unicode_is_analysed_and_escaped(catalog, model, case):
    text = ODD_TEXTS[case]
    r = run.analyse(catalog, model, text)
    assert r.ok, r.status
    assert "<script" not in r.tokens_html and "\x00" not in r.tokens_html
    still_serving(catalog)


BAD_TEXTS = [
    ("empty", "", "Type some text"),
    ("whitespace", " \n\t ", "Type some text"),
    ("none", None, "Type some text"),
]


@pytest.mark.parametrize("case, text, message", BAD_TEXTS, ids=[c[0] for c in BAD_TEXTS])
def test_missing_text_gets_a_message(catalog, case, text, message):
    r = run.analyse(catalog, "gpt", text)
    assert not r.ok and message in r.status
    still_serving(catalog)


@pytest.mark.parametrize("model", ["gpt", "mamba", "t5"])
def test_huge_text_is_cut_with_a_visible_note(catalog, model):
    r = run.analyse(catalog, model, "Mia has a red ball. " * 20_000)  # 400 k characters
    assert r.ok and "only the first" in r.status and "cut to the first" in r.tokens_html
    assert len(r.analysis.ids) <= tokens.PAGE_MAX_TOKENS


# --------------------------------------------------------------------------- bad settings (as the API can send them)

BAD_SETTINGS = [
    ("negative temperature", dict(temperature=-1.0), "temperature must be"),
    ("NaN temperature", dict(temperature=math.nan), "temperature must be"),
    ("infinite temperature", dict(temperature=math.inf), "temperature must be"),
    ("negative top_k", dict(top_k=-3), "top_k must be"),
    ("fractional top_k", dict(top_k=2.5), "top_k must be"),
    ("top_p zero", dict(top_p=0.0), "top_p must be"),
    ("top_p above one", dict(top_p=1.5), "top_p must be"),
    ("NaN top_p", dict(top_p=math.nan), "top_p must be"),
]


@pytest.mark.parametrize("case, settings, message", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_out_of_range_settings_are_refused_with_a_message(catalog, case, settings, message):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    args = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **settings}
    with pytest.raises(ValueError, match=message):  # the page shows a ValueError as an error toast
        sampling.distribution(catalog, a, args["temperature"], args["top_k"], args["top_p"])
    steps = list(generation.generate(catalog, "gpt", TEXT, 4, args["temperature"], args["top_k"], args["top_p"]))
    assert len(steps) == 1 and message in steps[0].status  # generation reports it as its status
    still_serving(catalog)


def test_extreme_but_valid_settings_work_and_say_what_they_do(catalog):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    fig, summary = sampling.distribution(catalog, a, 1e6, 0, 1.0)  # huge temperature: nearly uniform
    final = [t for t in fig.data if t.name == "final"][0].y
    assert max(final) - min(final) < 1e-4
    fig, summary = sampling.distribution(catalog, a, 1.0, 10**9, 1.0)
    assert "above the vocabulary" in summary


def test_unknown_model_names_get_a_message(catalog):
    r = run.analyse(catalog, "../../etc/passwd", TEXT)
    assert not r.ok and "Unknown model" in r.status
    steps = list(generation.generate(catalog, "nope", TEXT, 3))
    assert "Unknown model" in steps[0].status
    still_serving(catalog)


# --------------------------------------------------------------------------- faulty models


def _tiny_decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=ByteTokenizer().vocab_size, d_model=16, n_layer=1, n_head=2, d_ff=32,
                        max_seq_len=64, name="faulty", **kw)  # fmt: skip
    return Decoder(cfg).eval()


def test_a_model_producing_nan_shows_an_error_and_the_others_keep_working(catalog):
    bad = _tiny_decoder()
    with torch.no_grad():
        bad.lm_head.weight.fill_(float("nan"))
    catalog.put("nan-model", bad, ByteTokenizer())
    r = run.analyse(catalog, "nan-model", TEXT)
    assert "NaN" in r.distribution_note and r.distribution is None
    steps = list(generation.generate(catalog, "nan-model", TEXT, 3, 1.0))
    assert steps[-1].status.startswith("✕") and "NaN" in steps[-1].status
    still_serving(catalog)


def test_a_model_that_raises_shows_an_error_and_the_others_keep_working(catalog):
    broken = _tiny_decoder()

    def explode(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    broken.forward = explode
    catalog.put("raising-model", broken, ByteTokenizer())
    r = run.analyse(catalog, "raising-model", TEXT)
    assert not r.ok and "The model failed" in r.status and "simulated" in r.status
    steps = list(generation.generate(catalog, "raising-model", TEXT, 3))
    assert "Generation stopped" in steps[-1].status
    still_serving(catalog)


# --------------------------------------------------------------------------- the models directory


@pytest.fixture
def models_dir(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    make_hf_model("gpt2", root / "tiny-gpt2")
    (root / "empty").mkdir()
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    outside = tmp_path / "secret"
    make_hf_model("gpt2", outside)
    os.symlink(outside, root / "link-out")
    return root


TRAVERSALS = ["../secret", "../../etc", "/etc", "tiny-gpt2/../../secret", "link-out", "", "a\x00b", "missing"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_a_typed_name_cannot_leave_the_models_directory(models_dir, name):
    reg = Catalog(device="cpu", models_dir=models_dir)
    status, key = run.load_model(reg, name)
    assert key is None and status.startswith("✕") and len(reg) == 0


def test_loading_by_name_inside_the_models_directory(models_dir):
    reg = Catalog(device="cpu", models_dir=models_dir)
    assert reg.folders() == ["broken", "tiny-gpt2"]  # the link pointing out is not offered
    status, key = run.load_model(reg, "tiny-gpt2")
    assert status.startswith("✓") and key in reg and reg.get(key).family == "decoder"
    for name, why in (("broken", "config"), ("empty", "")):
        status, key = run.load_model(reg, name)
        assert key is None and status.startswith("✕"), status
    with pytest.raises(LoadError, match="no models directory"):
        Catalog(device="cpu").add_from_models_dir("tiny-gpt2")


# --------------------------------------------------------------------------- server defaults


def test_safe_defaults_and_explicit_opt_ins():
    args = parse_args([])
    assert args.host == "127.0.0.1" and not args.share and args.auth is None
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "--auth" in host_warning("0.0.0.0")
    assert parse_args(["--auth", "ada:secret"]).auth == "ada:secret"
    with pytest.raises(SystemExit):
        parse_args(["--auth", "no-colon"])
    assert args.max_sessions == 100 and parse_args(["--max-sessions", "5"]).max_sessions == 5
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            parse_args(["--max-sessions", bad])


# --------------------------------------------------------------------------- a stopped generation


def test_a_cancelled_generation_stops_running_the_model():
    """Stop (or a closed page) cancels the streaming event: the model is not called again after it."""
    import socket
    import time

    from gradio_client import Client

    from archplay.app.main import build_app

    reg = Catalog.from_names([], device="cpu")
    model = reg.get("mamba").model  # the longest context: room for many tokens
    calls = []
    original = model.forward

    def counting(*a, **k):
        calls.append(time.monotonic())
        time.sleep(0.02)  # slow enough that the cancel lands mid-stream
        return original(*a, **k)

    model.forward = counting
    demo = build_app(reg)
    demo.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        job = Client(f"http://127.0.0.1:{port}/", verbose=False).submit("mamba", TEXT, 256, 0.0, 0, 1.0, 0,
                                                                        api_name="/generate")  # fmt: skip
        deadline = time.monotonic() + 30
        while len(calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) >= 5, "generation did not start"
        job.cancel()
        time.sleep(1.0)
        settled = len(calls)
        time.sleep(1.5)
        assert len(calls) == settled < 200  # nothing ran after the cancel took effect
    finally:
        demo.close()


# --------------------------------------------------------------------------- what an attack from outside found


def _rendered(markdown: str) -> str:
    """``markdown`` as HTML by a CommonMark renderer (the page's renderer adds GFM's autolinks)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


PAYLOADS = ["![i](http://127.0.0.1:9/beacon.png)", "[t](https://example.com)", "<img src=x onerror=alert(1)>",
            "see www.example.com or a@b.example", "**bold** `code` | table | ~strike~ [MASK]"]  # fmt: skip


@pytest.mark.parametrize("payload", PAYLOADS)
def test_checkpoint_and_user_strings_are_escaped_for_markdown(payload):
    from archplay.app.messages import md_escape, quote

    for text in (md_escape(payload), quote(payload)):
        html_out = _rendered(f"✓ {text}")
        assert "<a " not in html_out and "<img" not in html_out and "<strong>" not in html_out
        unescaped = re.sub(r"\\.", "", text)  # what is left once every backslash escape is taken out
        assert "://" not in unescaped and "www." not in unescaped and "@" not in unescaped  # no GFM autolink


def test_a_folder_named_like_markdown_loads_and_shows_as_text(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    name = "![b](https:evil.example) [t](x)"
    make_hf_model("gpt2", root / name)
    cat = Catalog(device="cpu", models_dir=root)
    status, key = run.load_model(cat, name)
    assert status.startswith("✓") and key in cat
    html_out = _rendered(status)
    assert "<img" not in html_out and "<a " not in html_out and "![b]" in html_out


def test_text_is_cut_to_the_page_limit_before_tokenising(catalog, monkeypatch):
    seen = []
    tok = catalog.get("gpt").tokenizer
    encode = type(tok).encode
    monkeypatch.setattr(type(tok), "encode", lambda self, text, *a, **k: (seen.append(len(text)), encode(self, text, *a, **k))[1])
    huge = "Mia has a red ball. " * 50_000  # 1 M characters
    r = run.analyse(catalog, "gpt", huge)
    assert r.ok and f"the page reads the first {tokens.MAX_TEXT_CHARS:,}" in r.status
    steps = list(generation.generate(catalog, "gpt", huge, max_new_tokens=2, temperature=0.0))
    assert steps[-1].status.startswith("✓") and "the page reads the first" in steps[-1].status
    assert seen and max(seen) <= tokens.MAX_TEXT_CHARS


@pytest.mark.parametrize("config, message", [
    ({"activation_function": "swoosh"}, "not a valid gpt2 config: .*swoosh"),
    ({"n_embd": 0}, "d_model must be a whole number of at least 1, got 0"),
    ({"n_layer": -2}, "n_layer must be a whole number of at least 1, got -2"),
    ({"n_head": 2.5}, "n_head must be a whole number of at least 1, got 2.5"),
    ({"vocab_size": 10**10}, "vocab_size = 10,000,000,000, above the limit"),
])  # fmt: skip
def test_config_errors_are_load_errors_on_the_page_and_at_start_up(tmp_path, config, message):
    import json

    root = tmp_path / "models"
    make_hf_model("gpt2", root / "bad")
    cfg = json.loads((root / "bad" / "config.json").read_text())
    (root / "bad" / "config.json").write_text(json.dumps({**cfg, **config}))
    status, key = run.load_model(Catalog(device="cpu", models_dir=root), "bad")
    assert key is None and status.startswith("✕ **Problem:**") and re.search(message, status), status
    assert str(root) not in status  # paths relative to the models directory
    logged = []
    cat = Catalog.from_names([str(root / "bad")], device="cpu", builtins=("gpt",), log=logged.append)
    assert cat.keys() == ["gpt"] and len(logged) == 1 and re.search(message, logged[0])  # the rest still serve


def test_a_long_folder_name_gets_a_message(models_dir):
    status, key = run.load_model(Catalog(device="cpu", models_dir=models_dir), "x" * 300)
    assert key is None and "a folder name has at most 200 characters; this one has 300" in status


def test_a_vanishing_temperature_is_greedy_and_says_so(catalog):
    r = run.analyse(catalog, "gpt", TEXT)
    fig, summary = sampling.distribution(catalog, r.analysis, temperature=1e-46)
    assert fig is not None and "nan" not in summary.lower()
    assert "Temperature 1e-46 is below 0.0001: treated as 0, greedy." in summary
    hist, text = sampling.samples(catalog, r.analysis, temperature=1e-46, n=5)
    assert hist is not None and text.startswith("The most drawn token")


@pytest.mark.parametrize("settings, message", [
    (("hot", 0, 1.0), "temperature must be a number, got 'hot'"),
    ((None, 0, 1.0), "temperature must be a number, got 'None'"),
    ((1.0, 0, "x"), "top_p must be a number, got 'x'"),
    ((1.0, "many", 1.0), "top_k must be a whole number"),
    ((math.inf, 0, 1.0), "temperature must be a finite number"),
])  # fmt: skip
def test_wrong_types_through_the_api_get_a_message_naming_the_setting(catalog, settings, message):
    a = run.analyse(catalog, "gpt", TEXT).analysis
    with pytest.raises(ValueError, match=re.escape(message)):
        sampling.distribution(catalog, a, *settings)
    with pytest.raises(ValueError, match=re.escape(message)):
        sampling.samples(catalog, a, *settings, n=3)
    steps = list(generation.generate(catalog, "gpt", TEXT, 4, *settings))
    assert len(steps) == 1 and steps[0].status.startswith("✕") and message.split(",")[0] in steps[0].status


def test_a_lone_surrogate_in_sentences_is_replaced_not_an_empty_error(catalog):
    from archplay.app import embeddings

    views = embeddings.sentences(catalog, "bert", "Mia \ud800 ball.\nTom has a cat.")
    assert views.note.startswith("✓") and "\ufffd" in views.note
    views.note.encode("utf-8")  # the response can carry it
