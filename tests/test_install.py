"""A regular install (a wheel, not the checkout) carries the built-in models and finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel (offline: no build isolation) and installed into a bare folder."""
    tmp = tmp_path_factory.mktemp("install")
    wheels, target = tmp / "wheels", tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp)  # fmt: skip
    (wheel,) = wheels.glob("archplay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "archplay_assets/tokenizer/archplay.model" in names
    assert not any(n.startswith("archplay_assets/screenshots/") for n in names)  # the README's pictures stay out
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, cwd=tmp)  # fmt: skip
    return target


def test_the_installed_copy_loads_every_builtin_away_from_the_checkout(installed, tmp_path):
    code = (
        "import models, models.assets as a\n"
        "print(models.__file__)\n"
        "print(a.asset_dir())\n"
        "for name in models.BUILTIN_NAMES:\n"
        "    model, tok = models.load(name)\n"
        "    assert model.config.trained and len(tok.encode('Mia has a red ball.')) > 3, name\n"
        "print('ok')\n"
    )
    # -S: no site hooks, so the checkout's editable install cannot answer for `models`; the
    # interpreter's packages (torch, transformers) come in as a plain path after the install.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, assets, ok = out.stdout.split()
    assert Path(module_file).is_relative_to(installed)  # the installed copy ran, not the checkout
    assert Path(assets) == installed / "archplay_assets"
    assert ok == "ok"
