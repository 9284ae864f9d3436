"""Training (issue 15's targets): a 1 M-parameter recipe against the entropy floor, our training loop
against transformers' ``Trainer``, the page while a Lab job trains, and DDP with 2 processes against 1.

1. **A 1 M-parameter decoder reaches the floor.** ``archplay-train --recipe assets/recipes/lab-1m.json
   --evaluate 200 --json-progress`` in a subprocess with torch's default threads (all cores). The time
   against the target runs from the command's start to its last step's progress line: Python start-up
   and imports, building the world's corpus (all 14,000 training stories, no ``--stories``), the
   model, and training; beside it, the training loop alone (``training.json``'s ``seconds``) and the
   whole command (with saving and the evaluation). The gap is the evaluation's (``lm.gap``, nats per
   token, on 200 test stories). A run still going after ``LIMIT_S`` is stopped and reported as such.
2. **Our loop against ``Trainer``.** The same recipe (GPT-2's choices: learned positions, pre-LayerNorm,
   GELU (tanh), biases, tied embeddings) trained by ``train.fit`` and, as ``GPT2LMHeadModel`` of the same
   sizes (the same parameter count: checked here and in tests/test_bench_train15.py, dropout 0), by
   ``transformers.Trainer`` (``use_cpu``, fp32, no accumulation, AdamW with the same lr, betas, weight
   decay, warm-up, cosine schedule and clipping, its default optimizer implementation) on the same
   batches (the windows ``fit`` draws, fed in order), in this process with the same torch threads.
   Steady state: batch tokens over the median step time of the steps after the warm-up steps (the
   clock read after each optimizer step; the median, not the mean, so that another process's burst on
   a shared machine does not decide it). The two alternate (ours, Trainer, ours, Trainer, …); the best
   round of each is compared.
3. **The page while a Lab job trains.** ``python -m archplay --lab-jobs 1``; in headless Chromium a
   person opens the Lab tab and presses **Train** (the built-in gpt's recipe the tab starts from, its
   steps raised so the run outlasts the measurement; the server's Lab runs it on one thread), and the
   measurement starts once the tab's progress shows a trained step (the corpus is built). Then
   ``bench.page.measure``'s temperature steps (input event → distribution plot's title in the page)
   and page Runs: a new text typed into the Text box and **Run** clicked → the distribution plot's
   title names the new text's last position (``performance.now()`` in the page; the page's long tasks
   in that time beside it, and the same Runs through the API, ``gradio_client`` /analyse: the server's
   share). Side by side: the same server before the job starts (idle) and while it trains; the first
   Run of each page is a warm-up, left out.
4. **DDP, 2 processes against 1.** ``archplay-train --nproc 2 --threads 1`` against ``--nproc 1 --threads
   2`` (the same 2 cores), the same recipe (lab-1m), seed and global batch, on the first 500 stories
   (``--stories 500``: the corpus build is not what is compared); steady-state tokens per second from
   rank 0's ``--json-progress`` lines (training time only, validation excluded) after 10 steps, and
   whether the two runs' losses match.

    python -m bench.train [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from bench.report import percentiles, stop

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "assets" / "recipes" / "lab-1m.json"
SECTION = "training (issue 15)"
TRAIN = [sys.executable, "-m", "archplay.models.training.cli"]


def row(case: str, measure: str, value: str, target: str = "", met: bool | None = None, raw=None) -> dict:
    """One table row, as every bench module writes them."""
    r = {"section": SECTION, "case": case, "measure": measure, "value": value, "target": target, "met": met}
    if raw is not None:
        r["raw"] = raw
    return r


def steady_rate(times: list[float], tokens_per_step: int, warm: int, median: bool = False) -> float:
    """Tokens per second over the steps after the first ``warm``: ``times[i]`` is the clock after step i + 1.
    ``median``: from the median step's time instead of the mean (steadier on a shared machine)."""
    import statistics

    n = len(times) - warm
    if warm < 1 or n < 1:
        raise ValueError(f"need more than {warm} steps after at least one warm-up step, got {len(times)}")
    if median:
        return tokens_per_step / statistics.median(b - a for a, b in zip(times[warm - 1 :], times[warm:]))
    return n * tokens_per_step / (times[-1] - times[warm - 1])


def rate_from_progress(events: list[dict], tokens_per_step: int, warm: int) -> float:
    """Steady tokens per second from ``--json-progress`` lines: each line's ``tokens_per_s`` is the run's
    average so far over training time only (validation excluded), so the training seconds up to step s
    are s · tokens_per_step / tokens_per_s; the rate is taken between step ``warm`` and the last."""
    steps = [e for e in events if "step" in e and e.get("tokens_per_s")]
    first = next(e for e in steps if e["step"] == warm)
    last = steps[-1]
    seconds = [e["step"] * tokens_per_step / e["tokens_per_s"] for e in (first, last)]
    return (last["step"] - first["step"]) * tokens_per_step / (seconds[1] - seconds[0])


# --------------------------------------------------------------------------- 1. the 1 M recipe


LIMIT_S = 240  # the 1 M run is stopped here (twice the target): a loaded machine does not hold up the bench


def follow(cmd: list[str], limit: float) -> tuple[int | None, list[dict], float, str]:
    """Run ``cmd`` (``--json-progress``) for at most ``limit`` seconds -> (exit status or None when stopped,
    its progress lines (each with ``at_s``: when it came, seconds after the start), wall seconds, the end of
    its stderr)."""
    import threading

    events: list[dict] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []

    def read() -> None:  # each line with its arrival, seconds after the start ("at_s")
        events.extend({**json.loads(x), "at_s": time.perf_counter() - t0} for x in proc.stdout if x.startswith("{"))

    readers = [threading.Thread(target=read, daemon=True),
               threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)]  # fmt: skip
    for r in readers:
        r.start()
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(proc)
        code = None
    wall = time.perf_counter() - t0
    for r in readers:
        r.join(timeout=10)
    return code, events, wall, "".join(err)[-2000:]


def recipe_to_floor(tmp: Path, quick: bool) -> list[dict]:
    from archplay.models.training.recipe import Recipe, parameter_count

    recipe = Recipe.from_json(RECIPE)
    params = parameter_count(recipe)["total"]
    out = tmp / "lab-1m"
    cmd = [*TRAIN, "--recipe", str(RECIPE), "--out", str(out), "--evaluate", "200", "--json-progress"]
    if quick:
        cmd += ["--steps", "40", "--stories", "500"]
    code, events, wall, err = follow(cmd, LIMIT_S)
    steps = 40 if quick else recipe.steps
    case = f"lab-1m ({params:,} parameters; {steps} steps × {recipe.batch} × {recipe.context} tokens)"
    if quick:
        case += ", --quick: 40 steps on 500 stories (not the target's run)"
    corpus = "500" if quick else "14,000"
    measure = (f"archplay-train --evaluate 200, all threads: seconds from the start to the last step (start-up, "
               f"corpus of {corpus} stories, training) [the training loop alone; the whole command, with saving and "
               f"the evaluation]; the evaluation's gap to the entropy floor on 200 test stories")  # fmt: skip
    target = "" if quick else "≤ 120 s, gap ≤ 0.5 nats"
    if code is None:  # stopped at the limit: how far it got
        done = [e for e in events if "step" in e]
        val = [e["validation_loss"] for e in done if "validation_loss" in e]
        got = (f"step {done[-1]['step']} of {steps}, validation loss {val[-1]:.3f}" if val else
               f"{len(done)} steps" if done else "no step (still building the corpus)")  # fmt: skip
        return [row(case, measure, f"stopped after {wall:.0f} s (this bench's limit): {got}", target,
                    None if quick else False, raw={"wall_s": wall, "events": done[-3:]})]  # fmt: skip
    if code:
        raise RuntimeError(f"archplay-train failed: {err}")
    record = json.loads((out / "training.json").read_text())
    lm = record["evaluation"]["lm"]
    trained = max(e["at_s"] for e in events if "step" in e)  # the last step's line: the model is trained
    ok = None if quick else (trained <= 120 and lm["gap"] <= 0.5)
    return [row(case, measure,
                f"{trained:.0f} s [{record['seconds']:.0f} s; {wall:.0f} s]; gap {lm['gap']:.3f} nats (loss "
                f"{lm['cross_entropy']:.3f}, floor {lm['entropy_floor']:.3f})", target, ok,
                raw={"trained_s": trained, "wall_s": wall, "train_s": record["seconds"], "lm": lm,
                     "tokens_per_s": record["tokens_per_s"], "threads": record["threads"], "parameters": params})]  # fmt: skip


# --------------------------------------------------------------------------- 2. our loop against Trainer


def gpt2_config(recipe, tokenizer):
    """The ``GPT2Config`` of a GPT-2-style decoder recipe (learned positions, pre-LayerNorm, GELU, biases,
    full attention, tied embeddings), dropout 0; ValueError for a recipe GPT-2 cannot express."""
    from transformers import GPT2Config

    want = {"family": "decoder", "positions": "learned", "norm": "layernorm", "norm_position": "pre",
            "activation": "gelu", "attention": "full", "bias": True}  # fmt: skip
    if off := [k for k, v in want.items() if getattr(recipe, k) != v]:
        raise ValueError(f"not a GPT-2-style recipe ({', '.join(off)} differ from GPT-2's)")
    if recipe.kv_heads not in (None, recipe.heads) or recipe.d_ff not in (None, 4 * recipe.width):
        raise ValueError("GPT-2 has as many key/value heads as heads and a 4 · width MLP")
    return GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=recipe.max_len or recipe.context,
                      n_embd=recipe.width, n_layer=recipe.layers, n_head=recipe.heads, n_inner=None,
                      activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip


def _ours(recipe, splits, schedule, warm: int) -> tuple[float, list[float]]:
    from archplay.models.training import train

    model, tok = train.build(schedule, recipe.seed)
    times: list[float] = []
    train.fit(model, tok, schedule, splits, seed=recipe.seed, on_step=lambda p: times.append(time.perf_counter()))
    times = times[:-1]  # the last step also measures the validation loss
    return steady_rate(times, schedule.batch_size * schedule.seq_len, warm, median=True), times


def _trainer(recipe, tok, schedule, batches: list, warm: int, tmp: Path) -> tuple[float, list[float], str]:
    import transformers as T

    class Windows(torch.utils.data.Dataset):  # the windows fit draws, one row an item, in order
        def __init__(self):
            self.x = torch.cat([b[0] for b in batches])
            self.y = torch.cat([b[1] for b in batches])

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):  # labels are already the next tokens: shift_labels says so to the loss
            return {"input_ids": self.x[i], "labels": self.y[i], "shift_labels": self.y[i]}

    class Clock(T.TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    torch.manual_seed(recipe.seed)
    model = T.GPT2LMHeadModel(gpt2_config(recipe, tok))
    clock = Clock()
    args = T.TrainingArguments(
        output_dir=str(tmp / "trainer"), use_cpu=True, report_to=[], max_steps=len(batches),
        per_device_train_batch_size=schedule.batch_size, gradient_accumulation_steps=1, learning_rate=schedule.lr,
        weight_decay=schedule.weight_decay, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        lr_scheduler_type="cosine", warmup_steps=schedule.warmup, train_sampling_strategy="sequential",
        logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False, seed=recipe.seed,
    )  # fmt: skip
    trainer = T.Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[clock])
    trainer.train()
    optim = f"{getattr(args.optim, 'value', args.optim)}, {torch.get_num_threads()} threads"
    return steady_rate(clock.times, schedule.batch_size * schedule.seq_len, warm, median=True), clock.times, optim


def loop_against_trainer(tmp: Path, quick: bool) -> list[dict]:
    import importlib.util

    from archplay.models import story
    from archplay.models.training import train
    from archplay.models.training.recipe import Recipe, parameter_count, tokenizer_for

    if importlib.util.find_spec("accelerate") is None:  # transformers' Trainer needs it (transformers[torch])
        print("bench.train: the Trainer row is skipped: transformers' Trainer needs accelerate "
              "(pip install 'accelerate>=1.1.0')", file=sys.stderr)  # fmt: skip
        return [row("lab-1m as GPT-2", "training tokens/s: train.fit / transformers Trainer",
                    "not measured: accelerate is not installed", "ratio ≥ 1.0", None)]  # fmt: skip
    warm, steps, rounds = (3, 10, 1) if quick else (5, 30, 3)
    recipe = Recipe.from_json(RECIPE)
    tok = tokenizer_for(recipe)
    ours_params = parameter_count(recipe)["total"]
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        theirs_params = GPT2LMHeadModel(gpt2_config(recipe, tok)).num_parameters()
    # the last step of fit also measures the validation loss: one step more, left out of the clock
    schedule = replace(recipe.schedule(), steps=warm + steps + 1, eval_every=10**9)
    splits = story.make_splits(seed=0, n_train=500, n_valid=20, n_test=0)
    batch_iter, _ = train.data_for(schedule, "causal", tok, splits, recipe.seed)
    batches = [next(batch_iter) for _ in range(warm + steps)]  # what fit draws, in its order
    ours, theirs, optim = [], [], ""
    for _ in range(rounds):
        ours.append(_ours(recipe, splits, schedule, warm)[0])
        rate, _, optim = _trainer(recipe, tok, schedule, batches, warm, tmp)
        theirs.append(rate)
    best_ours, best_theirs = max(ours), max(theirs)
    ratio = best_ours / best_theirs
    case = (f"lab-1m as GPT-2 ({ours_params:,} parameters; GPT2LMHeadModel {theirs_params:,}), batch "
            f"{schedule.batch_size} × {schedule.seq_len}, fp32, {torch.get_num_threads()} threads")  # fmt: skip
    return [row(case, f"training tokens/s (median step of {steps}, after {warm} warm-up steps; best of {rounds} "
                      f"alternating runs each): train.fit / transformers Trainer (optim {optim})",
                f"{best_ours:,.0f} / {best_theirs:,.0f} tokens/s: ratio {ratio:.2f}",
                "ratio ≥ 1.0", ratio >= 1.0 and ours_params == theirs_params,
                raw={"ours": ours, "trainer": theirs, "optim": optim, "parameters": [ours_params, theirs_params]})]  # fmt: skip


# --------------------------------------------------------------------------- 3. the page while a job trains

_RUNS = """
async ([texts, wants]) => {
  const box = document.querySelector("#text textarea");
  const button = document.querySelector("#run");
  const host = document.querySelector("#distribution-plot");
  const setter = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set;
  const title = () => (host.querySelector(".gtitle") || {}).textContent || "";
  const long = [];
  const po = new PerformanceObserver((list) => list.getEntries().forEach(e => long.push([e.startTime, e.duration])));
  po.observe({type: "longtask"});
  const out = [], busy = [];
  for (let i = 0; i < texts.length; i++) {
    setter.call(box, texts[i]);
    box.dispatchEvent(new Event("input", {bubbles: true}));
    await new Promise(r => setTimeout(r, 100));  // the text is typed; the Run starts at the click
    const t0 = performance.now();
    await new Promise((resolve, reject) => {
      const obs = new MutationObserver(() => { if (title().includes(wants[i])) { obs.disconnect(); resolve(); } });
      obs.observe(host, {subtree: true, childList: true, characterData: true, attributes: true});
      button.click();
      setTimeout(() => { obs.disconnect(); reject(new Error(`no ${wants[i]} after 30 s; title: ${title()}`)); }, 30000);
    });
    const t1 = performance.now();
    out.push(t1 - t0);
    await new Promise(r => setTimeout(r, 1000));  // a person reads the result; the Run's follow-ups end
    busy.push(long.filter(([t]) => t >= t0 && t <= t1).reduce((a, [, d]) => a + d, 0));
  }
  po.disconnect();
  return [out, busy];
}
"""


def run_texts(n: int) -> tuple[list[str], list[str]]:
    """``n`` texts whose lengths alternate (so each Run moves the plot's position) and what the distribution
    plot's title then says: ``(position last)``."""
    from archplay.models.training.recipe import builtin_recipe, tokenizer_for

    tok = tokenizer_for(builtin_recipe("gpt"))  # the built-in gpt's vocabulary and its <s>
    names = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Max"]
    texts = [" ".join(["Mia has a red ball."] * (1 + i % 3)) + f" Then {names[i % len(names)]}" for i in range(n)]
    return texts, [f"(position {len(tok.encode(t)) - 1})" for t in texts]


def measure_runs(url: str, n: int) -> tuple[list[float], list[float]]:
    """Page Runs timed in Chromium: Run clicked → the distribution plot's title at the new text's last position;
    and, per Run, the page's long tasks (main-thread work over 50 ms) in that time, in ms."""
    texts, wants = run_texts(n + 1)
    with explore_page(url) as page:
        page.wait_for_timeout(2000)  # the first Run's follow-ups
        times, busy = page.evaluate(_RUNS, [texts, wants])
        return times[1:], busy[1:]  # the first Run of this page: a warm-up


@contextmanager
def explore_page(url: str):
    """Headless Chromium (Debian's) at 1280 × 800 on ``url``, once the first Run has drawn its distribution."""
    from playwright.sync_api import sync_playwright

    from bench.page import CHROMIUM

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_function("() => document.querySelector('#distribution-plot .gtitle')")
            yield page
        finally:
            browser.close()


def press_train(url: str, steps: int) -> str:
    """A person on the Lab tab: raise Steps, press Train, wait until the progress shows a trained step."""
    with explore_page(url) as page:
        page.get_by_role("tab", name="Lab").click()
        page.locator("#lab-steps input").fill(str(steps))
        page.locator("#lab-steps input").press("Tab")
        page.wait_for_timeout(500)
        page.locator("#lab-train").click()
        page.wait_for_function("() => /step [1-9]/.test((document.querySelector('#lab-progress') || {}).textContent"
                               " || '')", timeout=240_000)  # fmt: skip
        return page.locator("#lab-progress").inner_text().replace("\n", " ")


def _job_pids(server_pid: int) -> list[int]:
    from bench.report import descendants

    found = []
    for pid in descendants(server_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"archplay.models.training.cli" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_runs(url: str, n: int) -> list[float]:
    """The same Runs through the API (``gradio_client``, /analyse): the server's share of a page Run, in ms."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    texts, _ = run_texts(n + 1)
    times = []
    for text in texts:
        t0 = time.perf_counter()
        client.predict("gpt", text, 0, 0, 1.0, 0, 1.0, api_name="/analyse")
        times.append((time.perf_counter() - t0) * 1000)
    return times[1:]


def _measure_all(url: str, steps: int, runs: int) -> dict:
    from bench.page import measure

    page_runs, long_tasks = measure_runs(url, runs)
    return {"temperature": measure(url, "gpt", steps)["temperature"], "runs": page_runs, "long_tasks": long_tasks,
            "api": api_runs(url, runs)}  # fmt: skip


def page_while_training(quick: bool) -> list[dict]:
    from bench.load import start_server
    from bench.page import CHROMIUM

    if not Path(CHROMIUM).exists():
        print(f"bench.train: page rows skipped, {CHROMIUM} is not installed", file=sys.stderr)
        return []
    steps, runs = (10, 5) if quick else (40, 20)
    proc, url = start_server("cpu", "--model", "gpt", "--lab-jobs", "1")
    try:
        idle = _measure_all(url, steps, runs)
        progress = press_train(url, 3000)
        pids = _job_pids(proc.pid)
        if not pids:
            raise RuntimeError("the Lab's training process was not found under the server")
        cpu0, t0 = _cpu_seconds(pids[0]), time.monotonic()
        busy = _measure_all(url, steps, runs)
        alive = all(Path(f"/proc/{p}").exists() for p in pids)
        share = (_cpu_seconds(pids[0]) - cpu0) / (time.monotonic() - t0) if alive else float("nan")
        busy["lab_progress"] = progress
    finally:
        stop(proc)
    rows = []
    job = (f"a Lab job training (Train pressed on the Lab tab: gpt recipe, 1 thread; it used {share:.2f} of a core "
           f"during the measure and was still running after it: {'yes' if alive else 'NO'})")  # fmt: skip
    for case, m, target in (("no job (idle server)", idle, False), (job, busy, True)):
        t50, t95 = percentiles(m["temperature"])
        r50, r95 = percentiles(m["runs"])
        a50, a95 = percentiles(m["api"])
        l50, _ = percentiles(m["long_tasks"])
        rows.append(row(case, f"temperature step → distribution plot (Chromium), p50 / p95 over {len(m['temperature'])}",
                        f"{t50:.0f} / {t95:.0f} ms", "p95 ≤ 150 ms" if target else "",
                        (t95 <= 150 and alive) if target else None, raw=m))  # fmt: skip
        rows.append(row(case, f"page Run (Chromium): Run clicked → distribution plot at the new text, p50 / p95 over "
                              f"{len(m['runs'])} [the page's long tasks in it, p50; the same Run through the API "
                              "(gradio_client /analyse), p50 / p95]",
                        f"{r50:.0f} / {r95:.0f} ms [{l50:.0f} ms; API {a50:.0f} / {a95:.0f} ms]",
                        "p95 ≤ 1 s" if target else "", (r95 <= 1000 and alive) if target else None))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- 4. DDP


EARLY_STEPS = 10  # DDP's losses are compared here: later, another order of float sums has grown through training


def ddp(tmp: Path, quick: bool) -> list[dict]:
    from archplay.models.training.recipe import Recipe

    recipe = Recipe.from_json(RECIPE)
    steps, warm = (20, 5) if quick else (50, 10)
    per_step = recipe.batch * recipe.context
    out = {}
    for nproc in (1, 2):
        folder = tmp / f"ddp{nproc}"
        cmd = [*TRAIN, "--recipe", str(RECIPE), "--out", str(folder), "--steps", str(steps), "--stories", "500",
               "--nproc", str(nproc), "--threads", str(2 // nproc), "--device", "cpu", "--json-progress"]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"archplay-train --nproc {nproc} failed: {done.stderr[-2000:]}")
        events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        record = json.loads((folder / "training.json").read_text())
        out[nproc] = {"rate": rate_from_progress(events, per_step, warm), "wall_s": wall, "losses": record["losses"],
                      "world_size": record["world_size"]}  # fmt: skip
    diffs = [abs(a - b) for a, b in zip(out[1]["losses"], out[2]["losses"])]
    diff, early = max(diffs), max(diffs[:EARLY_STEPS])  # rounding (another order of sums) grows as training goes on
    ratio = out[2]["rate"] / out[1]["rate"]
    return [row(f"lab-1m, {steps} steps × {recipe.batch} × {recipe.context} (global batch), 500 stories, gloo, "
                f"{os.cpu_count()} cores",
                f"tokens/s after {warm} steps: --nproc 2 (1 thread each) / --nproc 1 (2 threads); wall time of each "
                f"command; losses, largest difference over the first {EARLY_STEPS} steps [over all {steps}]",
                f"{out[2]['rate']:,.0f} / {out[1]['rate']:,.0f} tokens/s: ratio {ratio:.2f}; {out[2]['wall_s']:.0f} s / "
                f"{out[1]['wall_s']:.0f} s; max |Δ loss| {early:.1e} [{diff:.1e}]",
                f"report (losses match: ≤ 1e-4 over the first {EARLY_STEPS})", early <= 1e-4 and out[2]["world_size"] == 2,
                raw={k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in out.items()}
                | {"max_diff": diff, "max_diff_early": early, "diffs": diffs})]  # fmt: skip


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    if device != "cpu":
        print("bench.train: the training targets are CPU targets; measured on the CPU", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for step in (recipe_to_floor, loop_against_trainer):
            rows += step(tmp, quick)
        rows += page_while_training(quick)
        rows += ddp(tmp, quick)
    return rows


if __name__ == "__main__":
    import argparse

    from bench.report import print_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=("floor", "trainer", "page", "ddp"))
    a = ap.parse_args()
    if a.only:
        parts = {"floor": recipe_to_floor, "trainer": loop_against_trainer, "ddp": ddp}
        found = []
        with tempfile.TemporaryDirectory() as t:
            for name in a.only:
                found += page_while_training(a.quick) if name == "page" else parts[name](Path(t), a.quick)
        print_table(found)
    else:
        print_table(run(a.quick))
