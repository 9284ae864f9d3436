"""Training, the built-in checkpoint format, and the evaluation report's arithmetic.

The shipped checkpoints are checked against loose versions of the issue's targets on a few
test stories (the README has the full report): loose, so the test never flakes, but a model
that had not learned would fail it.
"""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from archplay import models
from archplay.models import story
from archplay.models.checkpoints.loading import BUILTIN_DIR, LoadError, load_builtin, save_builtin
from archplay.models.story.tokenizer import SPTokenizer
from archplay.models.training import evaluate, train


@pytest.fixture(scope="module")
def small_splits():
    return story.make_splits(seed=0, n_train=120, n_valid=20, n_test=20)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(train.RECIPES))
def test_short_training_is_deterministic_and_learns(name, small_splits):
    # The eager scan for Mamba here (compiling takes ~40 s); test_mamba checks the compiled scan's values.
    a, tok, rec = train.train(train.RECIPES[name], splits=small_splits, steps=12, seed=0, compile_scan=False)
    b, _, rec_b = train.train(train.RECIPES[name], splits=small_splits, steps=12, seed=0, compile_scan=False)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same weights"
    assert rec["curve"]["train_loss"] == rec_b["curve"]["train_loss"]
    losses = rec["curve"]["train_loss"]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0], losses  # it learns something
    assert a.config.vocab_size == tok.vocab_size


def test_bert_masking_never_touches_the_specials_and_labels_only_masked():
    tok = SPTokenizer.builtin(prefix=("<cls>",), suffix=("<sep>",))
    ids = tok.encode("Mia has a red ball. She throws the ball to Tom.")
    rng = random.Random(0)
    inputs, labels = train.mask_tokens(ids, tok, rng)
    assert inputs[0] == ids[0] == tok.cls_token_id and inputs[-1] == ids[-1] == tok.sep_token_id
    chosen = [i for i, y in enumerate(labels) if y != train.IGNORE]
    assert len(chosen) == round(0.15 * (len(ids) - 2))
    assert all(labels[i] == ids[i] for i in chosen)
    assert all(inputs[i] == ids[i] for i in range(len(ids)) if i not in chosen)  # the rest untouched


def test_causal_windows_predict_the_next_token():
    stream = torch.arange(100)
    x, y = next(train.causal_batches(stream, 4, 10, torch.Generator().manual_seed(0)))
    assert x.shape == y.shape == (4, 10) and torch.equal(y, x + 1)


def test_builtin_checkpoint_round_trip_and_damage(tmp_path, small_splits):
    model, tok, rec = train.train(train.RECIPES["moe"], splits=small_splits, steps=2, seed=1)
    folder = save_builtin(model, tok, tmp_path / "moe", training=rec)
    again, tok2 = load_builtin(folder)
    ids = torch.tensor([tok.encode("Mia has a red ball.")])
    assert tok2.encode("Mia has a red ball.") == ids[0].tolist()
    torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert json.loads((folder / "training.json").read_text())["steps"] == 2

    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoadError, match="do not fit|damaged|weights"):
        load_builtin(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(LoadError, match="damaged"):
        load_builtin(folder)


def test_language_model_cross_entropy_of_a_uniform_model_is_log_vocab(small_splits):
    """The evaluation's arithmetic: a model that knows nothing scores exactly log V per token."""
    tok = SPTokenizer.builtin(prefix=("<s>",))
    V = tok.vocab_size

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return SimpleNamespace(logits=torch.zeros(*ids.shape, V))

    stories = small_splits["test"][:5]
    r = evaluate.language_model(Uniform(), tok, stories)
    assert r["cross_entropy"] == pytest.approx(math.log(V), rel=1e-6)
    assert r["tokens"] == sum(len(tok.encode(s.text)) for s in stories)  # <s> not predicted, </s> is
    assert r["entropy_floor"] == pytest.approx(story.entropy_floor(stories, r["tokens"]))


SHIPPED = all((BUILTIN_DIR / n / "config.json").is_file() for n in models.BUILTIN_NAMES)


@pytest.mark.skipif(not SHIPPED, reason="the trained built-ins are not in assets/checkpoints")
def test_shipped_builtins_are_trained_and_load_by_name():
    for name in models.BUILTIN_NAMES:
        model, tok = models.load(name)
        assert model.config.trained and "untrained" not in model.config.name
        assert isinstance(tok, SPTokenizer)


@pytest.mark.skipif(not SHIPPED, reason="the trained built-ins are not in assets/checkpoints")
def test_shipped_builtins_meet_loose_targets():
    stories = story.make_splits(seed=0)["test"][:40]
    r = evaluate.evaluate(models.BUILTIN_NAMES, stories, log=lambda m: None)
    for name in ("gpt", "moe", "mamba"):
        assert r[name]["lm"]["gap"] < 0.5, (name, r[name]["lm"])  # the target: 0.25
    assert r["bert"]["mlm"]["accuracy_determined"] > 0.6  # target 0.8
    t = r["t5"]["translation"]
    assert t["exact_match"] > 0.7 and t["alignment_accuracy"] > 0.5  # targets 0.9 and 0.7
    assert r["moe"]["routing"]["min_load"] > 0.02  # target 0.05: no dead expert
