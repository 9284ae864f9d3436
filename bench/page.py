"""What a person sees when they move a slider: input event → plot changed, in headless Chromium.

For each server, a real page (Debian's Chromium) moves the Temperature slider one step at a
time the way a drag does (the range input's value, then its ``input`` event) and times, in the
page (``performance.now()``), until the distribution plot's title shows the new value; the same
for the Head slider and the attention heatmap. Also counted: the requests the page sends to the
server per move (``/gradio_api/queue/join``), and the long tasks (over 50 ms) on the page's main
thread during a 20-step drag at 60 moves a second.

Side by side in one run: this code ("in the page": the page's script redraws from the Run's
payload) and the code before issue 14 ("server redraw": every move a server event rebuilding the
figure), checked out from git into a temporary folder; at the built-ins' vocabulary (1,280) and
at GPT-2's (50,257, a random-weight decoder saved to a folder); then again while 32
``gradio_client`` sessions load the same server (``bench.load``).

    python -m bench.page [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.report import percentiles, stop

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "353c659"  # main before issue 14: every slider move redrawn on the server
CHROMIUM = "/usr/bin/chromium"

_STEPS = """
async ([slider, plot, values, label]) => {
  const range = document.querySelector(`#${slider} input[type=range]`);
  const host = document.querySelector(`#${plot}`);
  const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set;
  const title = () => (host.querySelector(".gtitle") || {}).textContent || "";
  const out = [];
  for (const v of values) {
    const want = label.replace("{}", v);
    const t0 = performance.now();
    await new Promise((resolve, reject) => {
      const obs = new MutationObserver(() => { if (title().includes(want)) { obs.disconnect(); resolve(); } });
      obs.observe(host, {subtree: true, childList: true, characterData: true, attributes: true});
      setter.call(range, String(v));
      range.dispatchEvent(new Event("input", {bubbles: true}));
      range.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
      setTimeout(() => { obs.disconnect(); reject(new Error(`no ${want} after 20 s; title: ${title()}`)); }, 20000);
    });
    out.push(performance.now() - t0);
    await new Promise(r => setTimeout(r, 30));
  }
  return out;
}
"""

_DRAG = """
async ([slider, plot, values, label]) => {
  const range = document.querySelector(`#${slider} input[type=range]`);
  const host = document.querySelector(`#${plot}`);
  const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set;
  const long = [];
  const po = new PerformanceObserver((list) => list.getEntries().forEach(e => long.push([e.startTime, e.duration])));
  po.observe({type: "longtask"});
  const t0 = performance.now();
  for (const v of values) {  // one move per frame, as a drag
    setter.call(range, String(v));
    range.dispatchEvent(new Event("input", {bubbles: true}));
    await new Promise(r => requestAnimationFrame(r));
  }
  const released = performance.now();
  range.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
  const want = label.replace("{}", values[values.length - 1]);
  const title = () => (host.querySelector(".gtitle") || {}).textContent || "";
  while (!title().includes(want) && performance.now() - t0 < 30000) await new Promise(r => setTimeout(r, 10));
  const settled = performance.now() - t0;
  await new Promise(r => setTimeout(r, 200));
  po.disconnect();
  const over = long.filter(([, d]) => d > 50);
  return {long: over.filter(([t]) => t < released).map(([, d]) => d), after: over.filter(([t]) => t >= released).map(([, d]) => d),
          settled};
}
"""


def big_vocab_folder(root: Path) -> Path:
    """A random-weight GPT-2 checkpoint with GPT-2's vocabulary size (50,257 tokens; word-level, tiny
    otherwise) written as a Hugging Face folder, as a user's checkpoint would be."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from archplay.models import story

    words = sorted({w.lower() for s in story.make_splits(seed=0, n_train=0, n_valid=20, n_test=0)["validation"]
                    for w in s.text.replace(".", " .").split()})  # fmt: skip
    vocab = ["<unk>", *words]
    vocab += [f"w{i}" for i in range(50257 - len(vocab))]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    tok = T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    torch.manual_seed(0)
    cfg = T.GPT2Config(vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=512)
    folder = root / "gpt2-vocab"
    T.GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@contextmanager
def code_before(root: Path):
    """The code before issue 14, importable as ``archplay`` from the yielded folder (``git worktree``)."""
    tree = root / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), BEFORE], check=True,
                   capture_output=True)  # fmt: skip
    home = root / "home"
    home.mkdir()
    (home / "archplay").symlink_to(tree)
    try:
        yield home
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


@contextmanager
def server(cwd: Path, *args: str):
    from bench.load import start_server

    proc, url = start_server("cpu", *args, cwd=cwd)
    try:
        yield url
    finally:
        stop(proc)


def measure(url: str, model: str, steps: int) -> dict:
    """Temperature and head steps timed in the page, requests per move, long tasks in a drag."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            joins = []  # the fn_index of each event the page sends to the server
            page.on("request", lambda r: "/queue/join" in r.url and joins.append(_fn_index(r.post_data)))
            page.goto(f"{url}?model={model}" if model != "gpt" else url)
            if model != "gpt":  # the code before had no state in the address: choose the model as a user does
                page.locator("#model input").click()
                page.get_by_role("option").filter(has_text=model).first.click()
            page.wait_for_function("() => { const t = document.querySelector('#distribution-plot .gtitle');"
                                   f" return t && document.querySelector('#model input').value.includes('{model}'); }}")
            quiet_since = time.monotonic()  # the Run's follow-ups (other tabs' views) done: 5 s without a request
            count = len(joins)
            while time.monotonic() - quiet_since < 5:
                page.wait_for_timeout(250)
                if len(joins) != count:
                    count, quiet_since = len(joins), time.monotonic()
            temps = [round(0.05 * (i % 18 + 2), 2) for i in range(steps)]  # 0.1 … 0.95: each a change from the last
            before = len(joins)
            dist = page.evaluate(_STEPS, ["temperature", "distribution-plot", [f"{t:.2f}" for t in temps], "T={}"])
            dist_requests = (len(joins) - before) / steps
            sent = {"temperature": _names(page, joins[before:])}
            heads = [i % 4 for i in range(1, steps + 1)]
            before = len(joins)
            head = page.evaluate(_STEPS, ["head", "attention-plot", [str(h) for h in heads], "head {}"])
            head_requests = (len(joins) - before) / steps
            sent["head"] = _names(page, joins[before:])
            drag_values = [f"{0.3 + 0.05 * i:.2f}" for i in range(20)]
            drag = page.evaluate(_DRAG, ["temperature", "distribution-plot", drag_values, "T={}"])
        finally:
            browser.close()
    return {"temperature": dist, "head": head, "requests_per_move": {"temperature": dist_requests, "head": head_requests},
            "requests_sent": sent, "drag": drag}  # fmt: skip


def _sent(m: dict) -> str:
    """What was sent during the moves, when anything was: " (temperature: run_page ×1)"."""
    parts = [f"{k}: " + ", ".join(f"{n} ×{v.count(n)}" for n in sorted(set(v)))
             for k, v in m.get("requests_sent", {}).items() if v]  # fmt: skip
    return f" ({'; '.join(parts)})" if parts else ""


def _fn_index(body: str | None) -> int | None:
    try:
        return json.loads(body or "").get("fn_index")
    except (ValueError, AttributeError):
        return None


def _names(page, fns: list) -> list[str]:
    """The api names of the events behind ``fns`` (fn indices), so a stray request says what it was."""
    names = page.evaluate("() => Object.fromEntries(window.gradio_config.dependencies.map(d => [d.id, d.api_name]))")
    return [str(names.get(str(f), f)) for f in fns]


@contextmanager
def load(url: str, sessions: int, requests: int):
    """``sessions`` gradio_client sessions sending mixed requests to ``url`` while the block runs."""
    from collections import defaultdict

    from bench.load import one_session, session_texts

    out = {"times": defaultdict(list), "errors": [], "crosstalk": []}
    lock = threading.Lock()
    threads = [threading.Thread(target=one_session, args=(url, t, requests, out, lock), daemon=True)
               for t in session_texts(sessions)]  # fmt: skip
    for t in threads:
        t.start()
    time.sleep(3)
    try:
        yield out
    finally:
        for t in threads:
            t.join(timeout=300)


def rows_for(name: str, case: str, m: dict, target: bool) -> list[dict]:
    t50, t95 = percentiles(m["temperature"])
    h50, h95 = percentiles(m["head"])
    long = m["drag"]["long"]
    req = m["requests_per_move"]
    met = (lambda ok: ok) if target else (lambda ok: None)
    return [
        dict(section="slider → plot (Chromium)", case=f"{case}: {name}",
             measure=f"temperature step → distribution plot, p50 / p95 over {len(m['temperature'])}",
             value=f"{t50:.0f} / {t95:.0f} ms", target="p95 ≤ 50 ms" if target else "", met=met(t95 <= 50), raw=m),
        dict(section="slider → plot (Chromium)", case=f"{case}: {name}",
             measure=f"head step → attention heatmap, p50 / p95 over {len(m['head'])}",
             value=f"{h50:.0f} / {h95:.0f} ms", target="p95 ≤ 50 ms" if target else "", met=met(h95 <= 50)),
        dict(section="slider → plot (Chromium)", case=f"{case}: {name}",
             measure="requests to the server per move (temperature, head)",
             value=f"{req['temperature']:.1f}, {req['head']:.1f}" + _sent(m), target="0" if target else "",
             met=met(req["temperature"] == 0 and req["head"] == 0)),
        dict(section="slider → plot (Chromium)", case=f"{case}: {name}",
             measure="20-step drag (a move a frame): long tasks over 50 ms during the moves (their total); after "
                     "the release (the full redraw)",
             value=f"{len(long)} ({sum(long):.0f} ms); {len(m['drag']['after'])} ({sum(m['drag']['after']):.0f} ms)",
             target="no long task" if target else "", met=met(not long)),
    ]  # fmt: skip


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    if not Path(CHROMIUM).exists():
        print(f"bench.page: skipped, {CHROMIUM} is not installed", file=sys.stderr)
        return []
    steps = 10 if quick else 40
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = big_vocab_folder(tmp)
        with code_before(tmp) as old_home:
            for case, model in (("vocabulary 1,280", "gpt"), ("vocabulary 50,257", "gpt2-vocab")):
                for name, cwd, ours in (("in the page (this code)", ROOT, True), ("server redraw (before)", old_home, False)):
                    with server(cwd, "--model", "gpt", "--model", str(folder)) as url:
                        rows += rows_for(name, case, measure(url, model, steps), ours)
            if not quick:  # the same while a classroom works the server
                for name, cwd, ours in (("in the page (this code)", ROOT, True), ("server redraw (before)", old_home, False)):
                    with server(cwd, "--model", "gpt", "--model", str(folder)) as url, load(url, 32, 25):
                        rows += rows_for(name, "vocabulary 1,280, 32 sessions loading the server", measure(url, "gpt", steps),
                                         ours)  # fmt: skip
    return rows


if __name__ == "__main__":
    import argparse

    from bench.report import print_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    print_table(run(a.quick))
