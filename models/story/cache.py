"""A disk cache of the story world's splits, so a training run does not redraw 14,800 stories.

Drawing the full world takes 15–40 s of Python on a small CPU, and every training job (each Lab
run is its own process) needs it. The splits are a pure function of the grammar's source and the
arguments, so they are kept as compressed JSON under ``$ARCHPLAY_CACHE`` (default
``$XDG_CACHE_HOME/archplay`` or ``~/.cache/archplay``), named by a hash of both: a change to the
grammar or the vocabulary makes a new file. ``ARCHPLAY_CACHE=off`` turns the cache off. A file that
cannot be read or does not hold what its name says is ignored (and redrawn); a folder that cannot
be written only costs the time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path

from archplay.models.story.world import Story

_SOURCES = ("grammar.py", "world.py")
_STORED = [f.name for f in fields(Story) if f.name not in ("text", "spans")]  # text and spans are derived
MIN_STORIES = 1000  # smaller splits are drawn in well under a second: not worth a file


def folder() -> Path | None:
    """Where the cache lives; None when it is turned off."""
    where = os.environ.get("ARCHPLAY_CACHE", "")
    if where.lower() in ("off", "0", "none"):
        return None
    if where:
        return Path(where)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "archplay"


def key(**args) -> str:
    """A name for these splits: the grammar's source and the arguments, hashed."""
    h = hashlib.sha256(json.dumps(args, sort_keys=True).encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:20]


def load(name: str, counts: dict[str, int]) -> dict[str, list[Story]] | None:
    """The cached splits called ``name``, or None (missing, unreadable, or not the counts asked for)."""
    where = folder()
    if where is None:
        return None
    try:
        with gzip.open(where / f"world-{name}.json.gz", "rt", encoding="utf-8") as f:
            raw = json.load(f)
        splits = {k: [Story(**dict(zip(_STORED, row))) for row in raw[k]] for k in counts}
    except (OSError, ValueError, TypeError, KeyError, EOFError):
        return None
    if {k: len(v) for k, v in splits.items()} != counts:
        return None
    for stories in splits.values():  # JSON has lists where the record has tuples
        for s in stories:
            s.sentences = [tuple(x) for x in s.sentences]
    return splits


def save(name: str, splits: dict[str, list[Story]]) -> None:
    """Write the splits (atomically: a reader never sees half a file); an unwritable folder is skipped."""
    where = folder()
    if where is None:
        return
    raw = {k: [[getattr(s, f) for f in _STORED] for s in v] for k, v in splits.items()}
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=where, suffix=".tmp")
        with os.fdopen(fd, "wb") as f, gzip.open(f, "wt", encoding="utf-8", compresslevel=3) as z:
            json.dump(raw, z, separators=(",", ":"))
        os.replace(tmp, where / f"world-{name}.json.gz")
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
