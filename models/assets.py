"""Where the built-in models' files are: ``assets/`` of a checkout, or the installed data package.

A checkout (and an editable install) reads ``assets/`` beside the source tree. A regular install
(``pip install .``, a wheel) carries the same files as the data package ``archplay_assets``
(see ``pyproject.toml``), found through the import system, so the built-ins load wherever the
project is installed and whatever the working directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SOURCE_ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset_dir() -> Path:
    """The folder holding ``checkpoints/`` and ``tokenizer/``."""
    if SOURCE_ASSETS.is_dir():
        return SOURCE_ASSETS
    spec = importlib.util.find_spec("archplay_assets")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return SOURCE_ASSETS  # absent everywhere: the loaders then name the file they miss


__all__ = ["asset_dir"]
