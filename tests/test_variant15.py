"""Issue 15, item 5: fine-tuning on a variant of the world (new names, a new object)."""

from __future__ import annotations

import json

import pytest

from archplay.app import lab
from archplay.models import load
from archplay.models.story import make_splits, variant
from archplay.models.story.world import FEMALE, MALE
from archplay.models.training import cli, finetune


def test_the_variant_renames_names_and_one_object_and_keeps_the_annotations():
    words = variant.renames()
    assert words["kite"] == "glider" and words["kites"] == "gliders" and words["Mia"] == "Ayla"
    stories = variant.variant_stories(400, seed=3)
    seen = {w for s in stories for w in s.words}
    assert {"Ayla", "Kofi", "glider"} <= seen
    assert not seen & set(variant.NAMES) and "kite" not in seen and "kites" not in seen
    assert seen & (set(FEMALE) | set(MALE))  # half the names stay: the variant is the same world
    for s in stories[:50]:
        assert len(s.words) == len(s.pos) == len(s.entity) == len(s.spans)
        assert all(s.text[a:b] == w for w, (a, b) in zip(s.words, s.spans))  # spans redone for the new words
        assert all(p == "NAME" for w, p in zip(s.words, s.pos) if w in variant.NAMES.values())
    assert [s.text for s in variant.variant_stories(5, seed=3)] == [s.text for s in stories[:5]]  # deterministic
    train = {s.text for s in make_splits(n_train=300, n_valid=1, n_test=1)["train"]}
    assert not train & {s.text for s in variant.variant_stories(300)}  # its own stream, not the training one


def test_the_variant_refuses_what_is_not_in_the_world():
    with pytest.raises(ValueError, match="not names of the world"):
        variant.renames({"Bob": "Rob"})
    with pytest.raises(ValueError, match="not one of the world's objects"):
        variant.renames(obj=("spaceship", "rocket", "rockets"))
    for n in (0, 10**6):
        with pytest.raises(ValueError, match="between 1 and"):
            variant.variant_stories(n)


def test_the_new_words_are_new_to_the_built_ins_tokenizer():
    _, tok = load("gpt")
    one = lambda w: len(tok.encode(" " + w))  # noqa: E731  (with the start token)
    assert one("kite") == one("Mia") == 2
    assert all(one(w) > 2 for w in ["glider", *variant.NAMES.values()])


def test_the_lab_fills_the_text_with_the_variant_and_says_what_changed():
    text = variant.variant_text()
    train, held = finetune.split_text(text)
    assert len(train) + len(held) == variant.STORIES and len(held) == variant.STORIES // 10
    note = lab.variant_note()
    assert "Mia → Ayla" in note and "kite → glider" in note
    assert len(text) < 200_000  # fits the text box


def test_fine_tuning_on_the_variant_lowers_its_perplexity(tmp_path):
    path = tmp_path / "variant.txt"
    path.write_text(variant.variant_text(40), encoding="utf-8")
    code = cli.main(["--from", "gpt", "--recipe", "assets/recipes/gpt.json", "--text", str(path), "--out",
                     str(tmp_path / "ft"), "--steps", "6", "--threads", "1"])  # fmt: skip
    assert code == 0
    ft = json.loads((tmp_path / "ft" / "training.json").read_text())["fine_tune"]
    assert ft["passages"] == [36, 4]
    assert ft["after"]["perplexity"] < ft["before"]["perplexity"]


def test_the_variant_command_prints_the_stories(capsys):
    variant.main(["--stories", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert out.strip() == variant.variant_text(3, seed=1) and out.count("\n\n") == 2
