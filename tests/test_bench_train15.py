"""bench.train's pure helpers (issue 15): the GPT-2 equivalent of a recipe, steady-state rates, rows."""

from __future__ import annotations

import itertools

import pytest
import torch

from archplay.models.training.recipe import Recipe, parameter_count, tokenizer_for
from bench import train as bt


def test_lab_1m_is_about_a_million_parameters():
    r = Recipe.from_json(bt.RECIPE)
    assert 0.9e6 <= parameter_count(r)["total"] <= 1.1e6
    assert r.family == "decoder" and r.objective == "next-token"


@pytest.mark.parametrize("sizes", [{}, {"layers": 2, "width": 64, "heads": 2, "kv_heads": 2, "context": 64}])
def test_gpt2_equivalent_has_the_same_parameters(sizes):
    """The Trainer comparison is fair: GPT2LMHeadModel of the recipe's sizes has exactly as many weights."""
    from transformers import GPT2LMHeadModel

    r = Recipe.from_json(bt.RECIPE).replace(**sizes)
    cfg = bt.gpt2_config(r, tokenizer_for(r))
    assert (cfg.attn_pdrop, cfg.resid_pdrop, cfg.embd_pdrop) == (0.0, 0.0, 0.0)
    with torch.device("meta"):
        theirs = GPT2LMHeadModel(cfg).num_parameters()
    assert theirs == parameter_count(r)["total"]


def test_gpt2_config_refuses_what_gpt2_cannot_express():
    r = Recipe.from_json(bt.RECIPE)
    for change in ({"positions": "rope"}, {"norm": "rmsnorm"}, {"activation": "swiglu"}, {"bias": False},
                   {"kv_heads": 2}):  # fmt: skip
        with pytest.raises(ValueError):
            bt.gpt2_config(r.replace(**change), tokenizer_for(r))


def test_steady_rate_leaves_out_the_warm_up():
    times = [10.0, 11.0, 11.5, 12.0, 12.5]  # the clock after steps 1..5: the first step is slow
    assert bt.steady_rate(times, 100, warm=1) == pytest.approx(4 * 100 / 2.5)
    with pytest.raises(ValueError):
        bt.steady_rate(times, 100, warm=5)


def test_rate_from_progress_lines():
    # 100 tokens a step; the first 10 steps took 2 s, the next 10 took 1 s (averages as --json-progress gives them)
    events = [{"step": 10, "tokens_per_s": 1000 / 2}, {"step": 15, "tokens_per_s": 1500 / 2.5},
              {"step": 20, "tokens_per_s": 2000 / 3}, {"done": True}]  # fmt: skip
    assert bt.rate_from_progress(events, 100, warm=10) == pytest.approx(1000.0)


def test_rows_have_the_bench_keys():
    r = bt.row("case", "measure", "1 s", "≤ 2 s", True, raw={"x": 1})
    assert list(r)[:6] == ["section", "case", "measure", "value", "target", "met"] and r["raw"] == {"x": 1}
    assert "raw" not in bt.row("c", "m", "v")


def test_run_texts_alternate_positions():
    _, wants = bt.run_texts(4)
    assert all(a != b for a, b in itertools.pairwise(wants))
    assert all(w.startswith("(position ") for w in wants)
