"""Where the built-in models' files are: ``assets/`` beside the code.

In a checkout that is the repository's ``assets/`` folder; installed, the same files travel as the
data package ``archplay.assets`` (see ``pyproject.toml``), which sits at the same place relative
to this file. So the built-ins load wherever the project is installed and whatever the working
directory.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
  # holds checkpoints/ and tokenizer/
