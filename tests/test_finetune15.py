"""Issue 15: fine-tuning a built-in on a pasted text: the split, the CLI, the Lab's run and its report."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from archplay.app import lab
from archplay.app.catalog import Catalog
from archplay.models import load
from archplay.models.training import cli, finetune

TEXT = """The lighthouse keeper climbs the stairs every night. He lights the lamp and watches the sea.

Ships pass the rocks safely because of the light. The keeper writes their names in a book.

One stormy night a small boat comes too close. The keeper rings the bell and the boat turns away.

In the morning the sailors bring him bread and fish. They thank the keeper for the light."""


def test_the_text_splits_into_paragraphs_with_the_last_held_out():
    train, held = finetune.split_text(TEXT)
    assert len(train) == 3 and len(held) == 1 and held[0].text.startswith("In the morning")
    train, held = finetune.split_text("One sentence. Two sentences! Three?")  # one paragraph: by sentence
    assert [p.text for p in held] == ["Three?"] and len(train) == 2
    for bad in ("", "   ", "Just one sentence"):
        with pytest.raises(ValueError, match="at least two"):
            finetune.split_text(bad)


def test_perplexity_is_the_exponent_of_the_mean_loss():
    net, tok = load("gpt")
    ids = finetune.stream(tok, finetune.split_text(TEXT)[1])
    with torch.inference_mode():
        logits = net(ids[None, :-1]).logits[0]
    expected = math.exp(float(torch.nn.functional.cross_entropy(logits, ids[1:])))
    assert finetune.perplexity(net, ids, 256) == pytest.approx(expected, rel=1e-5)
    assert finetune.perplexity(net, ids, 8) > 1  # read in windows: still finite


def test_fine_tune_from_the_command_line_lowers_the_held_out_perplexity(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    code = cli.main(["--from", "gpt", "--recipe", "assets/recipes/gpt.json", "--text", str(text), "--out",
                     str(tmp_path / "ft"), "--steps", "8", "--threads", "1"])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "ft" / "training.json").read_text())
    ft = record["fine_tune"]
    assert ft["passages"] == [3, 1] and ft["held_out_tokens"] >= finetune.MIN_HELD_OUT_TOKENS
    assert ft["after"]["perplexity"] < ft["before"]["perplexity"]  # it learned something of the text
    assert ft["after"]["prompt"].startswith("In the morning")
    assert len(record["losses"]) == 8
    net, _ = load(str(tmp_path / "ft"))
    assert net.config.family == "decoder"


def test_fine_tune_refuses_what_it_cannot_do(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert cli.main(["--recipe", "assets/recipes/gpt.json", "--text", str(text), "--out", str(tmp_path / "a")]) == 2
    assert "--from" in capsys.readouterr().err
    assert cli.main(["--from", "bert", "--recipe", "assets/recipes/bert.json", "--text", str(text), "--out",
                     str(tmp_path / "b")]) == 2  # fmt: skip
    assert "next-token" in capsys.readouterr().err
    (tmp_path / "short.txt").write_text("Too short.", encoding="utf-8")
    assert cli.main(["--from", "gpt", "--recipe", "assets/recipes/gpt.json", "--text", str(tmp_path / "short.txt"),
                     "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    with pytest.raises(ValueError, match="choose one of"):
        lab.finetune_recipe("bert", 10, 1e-3)


def test_the_lab_fine_tunes_and_shows_before_and_after(tmp_path):
    catalog = Catalog.from_names([], builtins=("gpt",))
    runs = lab.Lab(catalog, tmp_path / "lab")
    run_id = runs.start(lab.finetune_recipe("gpt", 4, 1e-3), from_="gpt", text=TEXT + "\n\n<script>x</script> ok.")
    run = runs.get(run_id)
    deadline = time.monotonic() + 180
    while run.job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run.job.poll()["state"] == "done", run.job.poll()
    runs.finish(run)
    assert run.key in catalog.keys() and run.tuning
    md = lab.finetune_md(run.fine_tune, "<i>g</i>")
    assert "| perplexity on the held-out text |" in md and "<script>" not in md and "<i>" not in md
    assert lab.curve_figure("decoder", run.job.poll(), "g", world=False).layout.shapes == ()  # no story-world floor
