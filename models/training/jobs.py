"""Training in the background, for a page's Train button: ``archplay-train`` in a subprocess, followed.

    job = jobs.start(recipe, Path("runs/mine"), steps=300, threads=1)
    job.poll()    # {"state": "running", "step": 120, "steps": 300, "losses": [...], "tokens_per_s": ..., ...}
    job.stop()    # terminates the run (and any processes it started): state "stopped"
    job.wait(60)  # blocks until it ends (or the timeout); returns poll()

The run is a separate process (``python -m archplay.models.training.cli ... --json-progress``),
so a web server that starts it stays responsive and its GIL stays free; ``threads`` bounds the
torch threads the run takes. A reader thread turns the run's JSON lines into the state ``poll``
returns; every method may be called from any thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from archplay.models.training.recipe import Recipe

STATES = ("running", "done", "failed", "stopped")


class Job:
    """One background training run. Create it with ``start``."""

    def __init__(self, command: list[str], out: Path, steps: int):
        self.out = out
        self.command = command
        self._lock = threading.Lock()
        self._state = {"state": "running", "step": 0, "steps": steps, "losses": [], "validation": [],
                       "tokens_per_s": None, "elapsed_s": 0.0, "eta_s": None, "message": "", "out": str(out)}  # fmt: skip
        self._stderr: deque[str] = deque(maxlen=50)
        self._stopping = False
        self._done = False
        self._proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            bufsize=1, start_new_session=(os.name == "posix"),  # its own process group: stop() ends its children too
        )  # fmt: skip
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._err_reader.start()
        self._reader.start()

    # ------------------------------------------------------------------ reading the run

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            if line := line.strip():
                with self._lock:
                    self._stderr.append(line)

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not a progress line
            if isinstance(event, dict):
                self._update(event)
        code = self._proc.wait()  # reaps the process: no zombie
        self._err_reader.join(timeout=5)
        with self._lock:
            if self._stopping:
                self._state["state"] = "stopped"
            elif code == 0 and self._done:
                self._state["state"] = "done"
            else:
                self._state["state"] = "failed"
                last = self._stderr[-1] if self._stderr else ""
                self._state["message"] = last or f"archplay-train exited with status {code}"

    def _update(self, event: dict) -> None:
        with self._lock:
            s = self._state
            if event.get("done"):
                self._done = True
                return
            if "step" not in event:
                return
            s["step"], s["steps"] = event["step"], event.get("steps", s["steps"])
            s["losses"].append(event.get("loss"))
            if "validation_loss" in event:
                s["validation"].append((event["step"], event["validation_loss"]))
            for key in ("tokens_per_s", "elapsed_s", "eta_s"):
                s[key] = event.get(key, s[key])

    # ------------------------------------------------------------------ the API

    def poll(self) -> dict:
        """The run's state now: ``state`` (running | done | failed | stopped), ``step``, ``steps``,
        ``losses`` (one per step so far), ``validation`` [(step, loss)], ``tokens_per_s``,
        ``elapsed_s``, ``eta_s``, ``message`` (the run's last stderr line when it failed), ``out``."""
        with self._lock:
            s = dict(self._state)
            s["losses"], s["validation"] = list(s["losses"]), list(s["validation"])
            return s

    @property
    def state(self) -> str:
        with self._lock:
            return self._state["state"]

    def log(self) -> list[str]:
        """The run's last stderr lines."""
        with self._lock:
            return list(self._stderr)

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the run ends (or ``timeout`` seconds pass); returns ``poll()``."""
        self._reader.join(timeout)
        return self.poll()

    def stop(self, grace: float = 5.0) -> dict:
        """End the run (SIGTERM to its process group, SIGKILL after ``grace`` seconds); state "stopped"
        unless it had already finished."""
        with self._lock:
            if self._state["state"] != "running" or self._proc.poll() is not None:
                running = False
            else:
                self._stopping = running = True
        if running:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._reader.join(grace + 5)
        return self.poll()

    def _signal(self, sig: int) -> None:
        try:
            if os.name == "posix":
                os.killpg(self._proc.pid, sig)
            else:
                self._proc.terminate() if sig == signal.SIGTERM else self._proc.kill()
        except ProcessLookupError:
            pass

    def __repr__(self) -> str:
        s = self.poll()
        return f"<Job {s['state']} {s['step']}/{s['steps']} -> {self.out}>"


def start(recipe: Recipe | dict, out: str | Path, *, steps: int | None = None, from_: str | None = None,
          threads: int = 1, nproc: int = 1, stories: int | None = None, device: str = "cpu",
          evaluate: int = 0, text: str | None = None) -> Job:  # fmt: skip
    """Start training ``recipe`` into the folder ``out`` in the background; returns its ``Job``.

    The recipe is checked here (ValueError) and written to ``out/recipe.json``, which the run reads.
    ``steps`` overrides the recipe's; ``from_`` fine-tunes a built-in or a folder; ``threads`` torch
    threads per process; ``nproc`` data-parallel processes; ``stories`` a smaller corpus (quick runs);
    ``evaluate`` N: then the world's measures over N test stories, into training.json; ``text``:
    fine-tune ``from_`` on this text (written to ``out/text.txt``) instead of the story world."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = recipe.to_json(out / "recipe.json")
    command = [sys.executable, "-m", "archplay.models.training.cli", "--recipe", str(recipe_file), "--out", str(out),
               "--json-progress", "--threads", str(int(threads)), "--nproc", str(int(nproc)), "--device", device]  # fmt: skip
    if steps is not None:
        command += ["--steps", str(int(steps))]
    if from_ is not None:
        command += ["--from", str(from_)]
    if stories is not None:
        command += ["--stories", str(int(stories))]
    if evaluate:
        command += ["--evaluate", str(int(evaluate))]
    if text is not None:
        text_file = out / "text.txt"
        text_file.write_text(str(text), encoding="utf-8")
        command += ["--text", str(text_file)]
    return Job(command, out, int(steps or recipe.steps))


def wait_all(jobs: list[Job], timeout: float | None = None) -> list[dict]:
    """Wait for several jobs (a shared deadline); their ``poll()`` states."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in jobs:
        job.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return [job.poll() for job in jobs]


__all__ = ["Job", "STATES", "start", "wait_all"]
