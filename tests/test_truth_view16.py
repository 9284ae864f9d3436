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


def _frames(base: dict) -> list[tuple[float, float]]:
    from archplay.viz import style

    return [(f["y0"] + 0.5, f["x0"] + 0.5) for f in base["layout"].get("shapes", []) if f["line"]["color"] == style.GOLD]


def test_the_gold_antecedents_are_framed_on_the_attention_map(catalog):
    """Each pronoun's gold antecedent is a framed cell (pronoun's row, antecedent's column) of the Explore
    tab's self-attention map, in the page's payload; no frame for a text outside the world or a model
    that is not the world's."""
    from archplay.app.explore import payload
    from archplay.app.explore.truth import gold_cells

    labels_for = lambda ids: [str(i) for i in ids]  # noqa: E731
    text = ("One day, Ben finds a big ball. Soon he finds four brown socks. Then Leo makes a small pink cake. "
            "Ben goes home.")  # fmt: skip
    a = _analysis(catalog, "gpt", text)
    he, ben = a.labels.index("␣he"), a.labels.index("␣Ben")
    assert _frames(payload.explore_payload(labels_for, a, kind=None, layer=0, position=None)["attn"]["base"]) == []
    a.gold = gold_cells(catalog, a)  # what the page's Run sets
    assert a.gold == {"self": [(he, ben)]}
    base = payload.explore_payload(labels_for, a, kind=None, layer=0, position=None)["attn"]["base"]
    assert _frames(base) == [(he, ben)]
    assert any("gold antecedent" in n["text"] for n in base["layout"]["annotations"])
    b = _analysis(catalog, "bert", text)  # an encoder's map is framed too (it sees both sides)
    assert gold_cells(catalog, b) == {"self": [(b.labels.index("␣he"), b.labels.index("␣Ben"))]}
    assert gold_cells(catalog, _analysis(catalog, "gpt", "The cat sat on the mat because it was comfortable.")) == {}
    assert gold_cells(catalog, None) == {}


def test_the_gold_alignment_is_framed_on_the_cross_attention_map(catalog):
    """For t5, when its translation is the world's, each aligned target word's first step is framed against
    its gold source word's tokens on the cross-attention map (the cells alignment_hits scores)."""
    from archplay.app.explore import payload
    from archplay.app.explore.truth import gold_cells
    from archplay.models.analysis.truth import alignment_cells, translation

    a = _analysis(catalog, "t5", "Mia has a red ball.")
    world = translation(a.text)
    cells = gold_cells(catalog, a)
    if a.translation.text != world[0]:
        assert cells == {}
        return
    tok = catalog.get("t5").tokenizer
    src = a.labels
    tgt = a.translation.labels
    steps = {q for q, _ in cells["cross"]}
    assert len(steps) == 5  # five target words have a source word (ga and wo do not)
    pairs = {(tgt[q], src[k]) for q, k in cells["cross"]}
    assert pairs == {("Mia", "Mia"), ("␣fava", "␣has"), ("␣suri", "␣ball"), ("␣vani", "␣red"), (".", ".")}
    assert cells["cross"] == alignment_cells(tok, a.text, a.translation.text, len(tgt), len(src))
    a.gold = cells
    base = payload.explore_payload(lambda ids: [str(i) for i in ids], a, kind="cross", layer=0,
                                   position=None)["attn"]["base"]  # fmt: skip
    assert sorted(_frames(base)) == sorted(cells["cross"])
    assert any("gold word alignment" in n["text"] for n in base["layout"]["annotations"])
    decoder = payload.explore_payload(lambda ids: [str(i) for i in ids], a, kind="decoder", layer=0,
                                      position=None)["attn"]["base"]  # fmt: skip
    assert _frames(decoder) == []  # only the map the cells are of
