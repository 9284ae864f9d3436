"""The story world the built-ins learn from (its truth known exactly) and its tokenizer.

The built-in models train on short English stories drawn from a small probabilistic grammar.
Because every random choice is recorded, each story comes with its gold annotations (part of
speech, antecedents, entities and exact log-probabilities; see ``Story``).

    >>> import random
    >>> from archplay.models import story
    >>> s = story.generate_story(random.Random(0))
    >>> s.text                      # e.g. "One day, Mia finds a big red ball. She throws the ball to Tom. ..."
    >>> splits = story.make_splits(seed=0)   # {"train": [...], "validation": [...], "test": [...]}

Modules: ``world`` (the vocabulary, word classes, ``TAGS``, probabilities, and the records
``Story`` and ``Word``), ``grammar`` (the writer and generator, the rules that make the
annotations exact, the splits and the entropy floor), ``derivation`` (the exact re-derivation
check ``derivations``), ``translation`` (the invented target language) and ``tokenizer``
(imported on its own: ``from archplay.models.story import tokenizer``). Their public names are
exported here.
"""

from archplay.models.story.derivation import derivations
from archplay.models.story.grammar import (
    Decide,
    Option,
    entropy_floor,
    generate_story,
    make_splits,
    token_word_index,
)
from archplay.models.story.translation import (
    LEXICON,
    OBJECT,
    PLURAL_SUFFIX,
    SUBJECT,
    TOWARDS,
    Pair,
    Translation,
    target_word,
    translate,
    translation_pairs,
)
from archplay.models.story.world import (
    COLOURS,
    COUNTS,
    FEELINGS,
    FEMALE,
    MALE,
    MAX_CHARACTERS,
    MAX_SENTENCES,
    MAX_THINGS,
    MIN_SENTENCES,
    MOTION,
    NOUNS,
    OPENERS,
    P_NEW_CHARACTER,
    P_NO_COLOUR,
    P_NO_SIZE,
    P_PRONOUN,
    P_SAME_NOUN,
    P_STOP,
    PLACES,
    PUNCT,
    SIZES,
    TAGS,
    VERB_POS,
    VERBS,
    Slot,
    Story,
    Verb,
    Word,
    detokenize,
)

__all__ = [
    # world
    "TAGS", "FEMALE", "MALE", "PLACES", "COLOURS", "SIZES", "FEELINGS", "OPENERS", "NOUNS", "COUNTS",
    "MAX_CHARACTERS", "MAX_THINGS", "MIN_SENTENCES", "MAX_SENTENCES", "P_STOP", "P_NEW_CHARACTER",
    "P_PRONOUN", "P_NO_SIZE", "P_NO_COLOUR", "P_SAME_NOUN", "PUNCT", "Slot", "Verb", "VERBS", "MOTION",
    "VERB_POS", "Story", "Word", "detokenize",
    # grammar
    "Option", "Decide", "generate_story", "make_splits", "entropy_floor", "token_word_index",
    # derivation
    "derivations",
    # translation
    "SUBJECT", "OBJECT", "TOWARDS", "PLURAL_SUFFIX", "LEXICON", "target_word", "Pair", "Translation",
    "translate", "translation_pairs",
]  # fmt: skip
