"""Issue 16, item 6: the Explore tab says the story world's exact answer beside the model's, and says
plainly when a text leaves the world."""

from __future__ import annotations

import pytest

from archplay.app.catalog import Catalog
from archplay.app.explore import run
from archplay.app.explore.truth import truth_md


@pytest.fixture(scope="module")
def catalog():
    return Catalog.from_names([], builtins=("gpt", "bert", "t5"))


def _analysis(catalog, model, text):
    return run.analyse(catalog, model, text, 0, 0, 1.0, 0, 1.0).analysis


def test_a_causal_model_is_shown_beside_the_worlds_next_word(catalog):
    md = truth_md(catalog, _analysis(catalog, "gpt", "Mia finds a big red ball. She throws the"))
    assert "The story world's answer" in md and "| ‘ball’ | 100.0% |" in md and "KL(world ‖ model)" in md


def test_a_text_outside_the_world_is_said_plainly(catalog):
    md = truth_md(catalog, _analysis(catalog, "gpt", "The cat sat on the mat because it was comfortable."))
    assert "never writes" in md and "‘The’" in md and "guess" in md and "real checkpoint" in md
    md = truth_md(catalog, _analysis(catalog, "gpt", "Mia has a <b>red</b> ball"))
    assert "<b>" not in md and "guess" in md


def test_a_masked_model_is_shown_beside_the_worlds_blank(catalog):
    md = truth_md(catalog, _analysis(catalog, "bert", "Mia finds a big red ball. She throws the <mask>."))
    assert "for the blank" in md and "| ‘ball’ | 100.0% |" in md
    model_share = float(md.split("| ‘ball’ | 100.0% | ")[1].split("%")[0])
    assert 0 <= model_share <= 100


def test_no_note_where_the_world_says_nothing(catalog):
    assert truth_md(catalog, None) == ""
    a = _analysis(catalog, "gpt", "Mia has a glider.")  # the shown position is the last: "." ends a word
    assert "The story world" in truth_md(catalog, a) or "never writes" in truth_md(catalog, a)


def test_pronouns_are_shown_with_their_gold_antecedent_and_the_head_most_on_it(catalog):
    import torch

    text = ("One day, Ben finds a big ball. Soon he finds four brown socks. Then Leo makes a small pink cake. "
            "Ben goes home.")  # fmt: skip
    a = _analysis(catalog, "gpt", text)
    md = truth_md(catalog, a)
    row = next(line for line in md.splitlines() if line.startswith("| ‘he’"))
    he, ben = a.labels.index("␣he"), a.labels.index("␣Ben")
    assert f"({he}) → ‘Ben’ ({ben})" in row
    w = torch.stack([layer[:, he, ben] for layer in a.attentions])  # (L, H)
    layer, head = divmod(int(w.argmax()), w.shape[1])
    assert f"L{layer}.H{head} | {float(w[layer, head]):.0%}" in row
    assert ("✓" in row) == (int(a.attentions[layer][head, he].argmax()) == ben)


def test_a_translation_is_shown_beside_the_worlds_and_its_gold_alignment(catalog):
    from archplay.models.analysis.truth import alignment_hits, translation

    a = _analysis(catalog, "t5", "Mia has a red ball.")
    world = translation(a.text)
    assert world[0] == "Mia ga suri vani wo fava." and world[3] == [0, None, 4, 3, None, 1, 5]
    md = truth_md(catalog, a)
    if a.translation.text == world[0]:
        hits = alignment_hits(catalog.get("t5").tokenizer, a.text, a.translation.text, a.translation.cross_attentions)
        layer = max(range(len(hits["layers"])), key=hits["layers"].__getitem__)
        assert "world's exact one" in md and f"for {hits['layers'][layer]} of {hits['words']} words" in md
        assert hits["words"] == 5  # the particles ga and wo have no source word
    else:
        assert "they differ" in md
    assert "one sentence at a time" in truth_md(catalog, _analysis(catalog, "t5", "Mia has a ball. Tom has a kite."))
    assert "never writes" in truth_md(catalog, _analysis(catalog, "t5", "The cat sat."))


def test_the_gold_antecedents_are_framed_on_the_attention_map(catalog):
    """Each pronoun's gold antecedent is a framed cell (pronoun's row, antecedent's column) of the Explore
    tab's self-attention map, in the page's payload; no frame for a text outside the world or a model
    that is not the world's."""
    from archplay.app.explore import payload
    from archplay.app.explore.truth import gold_cells
    from archplay.viz import style

    text = ("One day, Ben finds a big ball. Soon he finds four brown socks. Then Leo makes a small pink cake. "
            "Ben goes home.")  # fmt: skip
    a = _analysis(catalog, "gpt", text)
    cells = gold_cells(catalog, a)
    he, ben = a.labels.index("␣he"), a.labels.index("␣Ben")
    assert cells == [(he, ben)]
    base = payload.explore_payload(lambda ids: [str(i) for i in ids], a, kind=None, layer=0, position=None, gold=cells)["attn"]["base"]
    frames = [s for s in base["layout"]["shapes"] if s["line"]["color"] == style.GOLD]
    assert [(f["y0"] + 0.5, f["x0"] + 0.5) for f in frames] == [(he, ben)]
    assert any("gold antecedent" in n["text"] for n in base["layout"]["annotations"])
    b = _analysis(catalog, "bert", text)  # an encoder's map is framed too (it sees both sides)
    assert gold_cells(catalog, b) == [(b.labels.index("␣he"), b.labels.index("␣Ben"))]
    assert gold_cells(catalog, _analysis(catalog, "gpt", "The cat sat on the mat because it was comfortable.")) == []
    assert gold_cells(catalog, _analysis(catalog, "t5", text)) == []  # a translation shows its alignment instead
    assert gold_cells(catalog, None) == []
    plain = payload.explore_payload(lambda ids: [str(i) for i in ids], a, kind=None, layer=0, position=None)["attn"]["base"]
    assert not any(s["line"]["color"] == style.GOLD for s in plain["layout"].get("shapes", []))
