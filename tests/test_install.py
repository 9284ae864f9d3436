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
    assert "archplay/assets/tokenizer/archplay.model" in names
    assert not any(n.startswith("archplay/assets/screenshots/") for n in names)  # the README's pictures stay out
    # One import root: nothing named app, models or viz (or anything else) at the top of site-packages.
    assert {n.split("/")[0] for n in names} == {"archplay", "archplay-0.1.0.dist-info"}
    # Every source file of the checkout's app/, models/ and viz/ travels (a new subpackage must be listed).
    sources = {f"archplay/{p.relative_to(ROOT).as_posix()}" for top in ("app", "models", "viz")
               for p in (ROOT / top).rglob("*.py")}  # fmt: skip
    assert sources and sources <= set(names), sorted(sources - set(names))
    assert {"archplay/__init__.py", "archplay/__main__.py", "archplay/models/registry.py"} <= set(names)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, cwd=tmp)  # fmt: skip
    return target


def test_the_installed_copy_loads_every_builtin_away_from_the_checkout(installed, tmp_path):
    code = (
        "from archplay import models\n"
        "from archplay.models.checkpoints.assets import ASSETS\n"
        "print(models.__file__)\n"
        "print(ASSETS)\n"
        "for name in models.BUILTIN_NAMES:\n"
        "    model, tok = models.load(name)\n"
        "    assert model.config.trained and len(tok.encode('Mia has a red ball.')) > 3, name\n"
        "print('ok')\n"
    )
    # -S: no site hooks, so the checkout's editable install cannot answer for `archplay`; the
    # interpreter's packages (torch, transformers) come in as a plain path after the install.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, assets, ok = out.stdout.split()
    assert Path(module_file).is_relative_to(installed)  # the installed copy ran, not the checkout
    assert Path(assets) == installed / "archplay" / "assets"
    assert ok == "ok"
