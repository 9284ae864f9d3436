"""Data-parallel training (issue 15): 1 and 2 processes (gloo, on 127.0.0.1) compute the same losses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch.distributed as dist

from archplay.models.training import cli

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")  # fmt: skip

RECIPES = {
    "decoder": {"family": "decoder", "layers": 2, "width": 32, "heads": 4, "kv_heads": 2, "steps": 3, "batch": 5,
                "context": 32, "seed": 0},
    # masked: rows of different lengths and a different number of masked tokens on each rank
    "encoder": {"family": "encoder", "layers": 2, "width": 32, "heads": 4, "steps": 3, "batch": 5, "context": 64},
}  # fmt: skip


@pytest.mark.parametrize("family", list(RECIPES))
def test_one_and_two_processes_give_the_same_losses(family, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECIPES[family]))
    common = ["--recipe", str(path), "--stories", "120", "--threads", "1", "--device", "cpu"]
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    run = subprocess.run([sys.executable, "-m", "archplay.models.training.cli", *common, "--out", str(tmp_path / "two"),
                          "--nproc", "2", "--json-progress"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "training.json").read_text())
    two = json.loads((tmp_path / "two" / "training.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    assert two["validation"]["loss"] == pytest.approx(one["validation"]["loss"], abs=1e-4)
    assert one["tokens"] == two["tokens"]  # the same global batches
    done = [json.loads(line) for line in run.stdout.splitlines()]  # rank 0 alone reports
    assert [d["step"] for d in done[:-1]] == [1, 2, 3] and done[-1]["done"] is True
