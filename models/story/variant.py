"""A variant of the story world: the same grammar with new names and a new object.

Fine-tuning a built-in on a variant shows what continued training changes and what it keeps:
the stories' shape is the one the model knows, but some of its names and one of its objects are
words it has never seen (the tokenizer splits them into pieces). Stories are drawn by the world's
own grammar from a stream of their own (never the training stream) and renamed word by word, so
every annotation stays exact.

    python -m archplay.models.story.variant --stories 300 > variant.txt
    archplay-train --from gpt --text variant.txt --out runs/gpt-variant
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

from archplay.models.story.grammar import generate_story
from archplay.models.story.world import FEMALE, MALE, NOUNS, Story

# Old word -> new word. Half the names of each gender change; one noun (and its plural) changes.
NAMES = {"Mia": "Ayla", "Lily": "Ines", "Emma": "Wren", "Anna": "Freya", "Sara": "Juno", "Lucy": "Nadia",
         "Tom": "Kofi", "Ben": "Arlo", "Sam": "Yusuf", "Leo": "Omar", "Max": "Ezra", "Jack": "Teo"}  # fmt: skip
OBJECT = ("kite", "glider", "gliders")  # a toy -> a word not in the world (singular, plural)
STORIES = 300  # a default variant corpus: about 20,000 tokens


def renames(names: dict[str, str] | None = None, obj: tuple[str, str, str] | None = None) -> dict[str, str]:
    """Every word the variant changes, old -> new: ``names`` (old name -> new name) and ``obj``
    (an object of the world, its new word, the new word's plural)."""
    names = NAMES if names is None else names
    old, new, plural = OBJECT if obj is None else obj
    if old not in NOUNS:
        raise ValueError(f"{old!r} is not one of the world's objects")
    unknown = sorted(set(names) - set(FEMALE) - set(MALE))
    if unknown:
        raise ValueError(f"not names of the world: {', '.join(unknown)}")
    return {**names, old: new, NOUNS[old][0]: plural}


def rename(story: Story, words: dict[str, str]) -> Story:
    """``story`` with its words renamed (text and character spans redone; annotations kept)."""
    return replace(story, words=[words.get(w, w) for w in story.words], text="", spans=[])


def variant_stories(n: int = STORIES, seed: int = 0, words: dict[str, str] | None = None) -> list[Story]:
    """``n`` stories of the variant world, deterministic in ``seed``."""
    if not 1 <= int(n) <= 20_000:
        raise ValueError("give between 1 and 20,000 stories")
    rng = random.Random(f"archplay-variant-{seed}")
    words = renames() if words is None else words
    return [rename(generate_story(rng), words) for _ in range(int(n))]


def variant_text(n: int = STORIES, seed: int = 0) -> str:
    """The variant's stories as one text, a blank line between stories (as a pasted text)."""
    return "\n\n".join(s.text for s in variant_stories(n, seed))


def describe(words: dict[str, str] | None = None) -> str:
    """One line saying what the variant changes."""
    words = renames() if words is None else words
    names = ", ".join(f"{a} → {b}" for a, b in words.items() if a in NAMES)
    objects = ", ".join(f"{a} → {b}" for a, b in words.items() if a not in NAMES)
    return f"names {names}; object {objects}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m archplay.models.story.variant", description=__doc__.split("\n\n")[0])
    p.add_argument("--stories", type=int, default=STORIES, help=f"how many stories (default {STORIES})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        print(variant_text(args.stories, args.seed))
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()


__all__ = ["NAMES", "OBJECT", "describe", "rename", "renames", "variant_stories", "variant_text"]
