"""``archplay-train`` and the background job API (issue 15), on tiny recipes and a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from archplay.models import load
from archplay.models.training import cli, jobs
from archplay.models.training.recipe import Recipe

TINY = {"family": "decoder", "layers": 2, "width": 32, "heads": 4, "kv_heads": 2, "steps": 3, "batch": 4,
        "context": 32, "lr": 0.003, "seed": 0}  # fmt: skip
QUICK = ["--stories", "120"]  # a small corpus: the full world takes ~20 s to generate


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _check_checkpoint(out: Path, steps: int) -> dict:
    assert {"config.json", "model.safetensors", "training.json"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "training.json").read_text())
    assert len(record["losses"]) == steps and all(isinstance(x, float) for x in record["losses"])
    assert record["validation"]["step"][-1] == steps and record["tokens_per_s"] > 0 and record["seconds"] >= 0
    model, tok = load(out)
    saved = load_file(str(out / "model.safetensors"))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())  # the forward below runs the saved weights
    logits = model(torch.tensor([tok.encode("Mia has a red ball.")])).logits
    assert torch.isfinite(logits).all()
    return record


def test_train_a_tiny_recipe_in_process(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["--recipe", str(tiny), "--out", str(out), *QUICK]) == 0
    record = _check_checkpoint(out, 3)
    assert record["recipe"] == {**Recipe.from_dict(TINY).to_dict(), "name": "run"}  # named after its folder
    assert record["world_size"] == 1 and record["from"] is None
    model, _ = load(out)
    assert model.config.name == "run" and model.config.n_kv_head == 2
    assert "run: 3 steps" in capsys.readouterr().out


def test_train_as_a_subprocess_with_json_progress(tiny, tmp_path):
    out = tmp_path / "sub"
    run = subprocess.run([sys.executable, "-m", "archplay.models.training.cli", "--recipe", str(tiny), "--out", str(out),
                          "--steps", "2", "--json-progress", "--threads", "1", *QUICK],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]  # stdout holds JSON lines only
    steps, done = lines[:-1], lines[-1]
    assert [s["step"] for s in steps] == [1, 2] and all(s["steps"] == 2 for s in steps)
    assert all({"loss", "tokens_per_s", "elapsed_s", "eta_s"} <= set(s) for s in steps)
    assert steps[-1]["eta_s"] == 0 and "validation_loss" in steps[-1]
    assert done == {"done": True, "out": str(out)}
    record = _check_checkpoint(out, 2)
    assert record["losses"] == [s["loss"] for s in steps]


def test_fine_tune_a_builtin(tiny, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert cli.main(["--recipe", str(tiny), "--from", "gpt", "--out", str(out), "--steps", "2", *QUICK]) == 0
    err = capsys.readouterr().err
    assert "ignoring the recipe's architecture where it differs from the loaded model" in err and "d_model" in err
    record = _check_checkpoint(out, 2)
    assert record["from"] == "gpt" and record["losses"][0] < 4.0  # a trained model (from scratch: ~7.2)
    model, _ = load(out)
    assert model.config.d_model == 128 and model.config.name == "tuned"  # the architecture is gpt's
    gpt, _ = load("gpt")
    assert not torch.equal(model.state_dict()["lm_head.weight"], gpt.state_dict()["lm_head.weight"])  # it trained

    again = tmp_path / "again"  # from that folder, with the recipe it recorded
    assert cli.main(["--from", str(out), "--out", str(again), "--steps", "1", *QUICK]) == 0
    assert json.loads((again / "training.json").read_text())["from"] == str(out)


def _fails(argv: list[str], capsys, message: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("archplay-train: error:") and message in err, err
    assert "Traceback" not in err


def test_bad_inputs_exit_2_with_one_line(tiny, tmp_path, capsys):
    out = str(tmp_path / "o")
    _fails(["--recipe", str(tmp_path / "nope.json"), "--out", out], capsys, "no such recipe file")
    (tmp_path / "bad.json").write_text(json.dumps({**TINY, "layers": -1}))
    _fails(["--recipe", str(tmp_path / "bad.json"), "--out", out], capsys, "layers must be between 1 and 48")
    (tmp_path / "broken.json").write_text("{")
    _fails(["--recipe", str(tmp_path / "broken.json"), "--out", out], capsys, "could not be read as JSON")
    (tmp_path / "file").write_text("x")
    _fails(["--recipe", str(tiny), "--out", str(tmp_path / "file")], capsys, "is a file; give a folder")
    _fails(["--recipe", str(tiny), "--out", out, "--steps", "0"], capsys, "--steps must be at least 1")
    _fails(["--recipe", str(tiny), "--out", out, "--steps", "many"], capsys, "invalid int value")
    _fails(["--recipe", str(tiny), "--out", out, "--bogus"], capsys, "unrecognized arguments: --bogus")
    _fails(["--recipe", str(tiny)], capsys, "--out")
    _fails(["--out", out], capsys, "give --recipe")
    _fails(["--recipe", str(tiny), "--out", out, "--nproc", "0"], capsys, "--nproc must be between 1 and")
    _fails(["--recipe", str(tiny), "--out", out, "--nproc", "8"], capsys, "the batch (4) must be at least")
    _fails(["--recipe", str(tiny), "--out", out, "--from", str(tmp_path / "nothing")], capsys, "not a built-in")
    _fails(["--recipe", str(tiny), "--out", out, "--from", "bert"], capsys, "of the encoder family; the recipe is for the decoder")
    _fails(["--from", str(tmp_path), "--out", out], capsys, "has no recipe (training.json from archplay-train)")
    assert not (tmp_path / "o").exists()  # nothing was written


# --------------------------------------------------------------------------- background jobs


def test_jobs_run_fail_and_stop(tmp_path):
    short = jobs.start(TINY, tmp_path / "short", steps=3, threads=1, stories=120)
    failing = jobs.start(TINY, tmp_path / "failing", from_="no-such-model", threads=1)
    long = jobs.start({**TINY, "steps": 100_000}, tmp_path / "long", threads=1, stories=120)
    assert long.poll()["state"] == "running" and long.poll()["steps"] == 100_000

    done = short.wait(240)
    assert done["state"] == "done", (done, short.log())
    assert done["step"] == done["steps"] == 3 and len(done["losses"]) == 3 and done["eta_s"] == 0
    assert done["tokens_per_s"] > 0 and done["validation"][-1][0] == 3
    assert json.loads((tmp_path / "short" / "training.json").read_text())["losses"] == done["losses"]

    failed = failing.wait(240)
    assert failed["state"] == "failed" and "--from no-such-model" in failed["message"], failed

    deadline = time.monotonic() + 240
    while long.poll()["step"] < 2 and long.poll()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert long.poll()["state"] == "running" and long.poll()["step"] >= 2
    stopped = long.stop()
    assert stopped["state"] == "stopped" and 2 <= stopped["step"] < 100_000
    assert long._proc.returncode is not None  # reaped: no zombie
    with pytest.raises(ProcessLookupError):
        os.kill(long._proc.pid, 0)
    assert long.stop()["state"] == "stopped" and short.stop()["state"] == "done"  # idempotent


def test_jobs_check_the_recipe_before_starting(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe keys"):
        jobs.start({**TINY, "layer": 2}, tmp_path / "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        jobs.start(TINY, tmp_path / "f")


# --------------------------------------------------------------------------- one loop for the built-ins too

# Recorded from train.train before the loop was shared with archplay-train (the refactor changed no number).
BEFORE = {
    "bert": [7.15839, 6.66476, 6.56777],  # masked
    "t5": [7.75957, 5.78284, 5.33974],  # translation
    "moe": [7.18718, 7.08333, 6.45794],  # with the load-balancing loss
}


def test_the_builtin_trainer_gives_the_numbers_it_gave_before_the_refactor():
    from archplay.models import story
    from archplay.models.training import train

    _, _, record = train.train(train.RECIPES["gpt"], steps=3)  # the full world, as `--model gpt --steps 3`
    assert record["losses"] == pytest.approx([7.18606, 6.77408, 6.22954], abs=1e-4)  # (gpt's first phase)
    assert record["curve"]["train_loss"] == [round(x, 5) for x in record["losses"]]
    splits = story.make_splits(seed=0, n_train=120, n_valid=20, n_test=20)
    for name, losses in BEFORE.items():
        _, _, record = train.train(train.RECIPES[name], splits=splits, steps=3, seed=0)
        assert record["losses"] == pytest.approx(losses, abs=1e-4), name
