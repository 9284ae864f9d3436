"""Memory per visitor, and whether the server gives it back once the visitors are gone.

    python -m bench.sessions [--quick] [--device cpu|cuda] [--json out.json]

**What one session holds**, measured in this process: the ``Analysis`` a Run leaves in the
session (``Analysis.nbytes``: its tensors, each storage once) for every built-in on a sentence and
on the longest text a Run takes (``PAGE_MAX_TOKENS``, or the model's context), and for a
GPT-2-sized checkpoint (124 M parameters, random weights, built offline in a temporary folder;
skipped with ``--quick``) at 512 tokens. Then the whole session as Gradio keeps it: the app built
in this process, one ``/analyse`` per built-in through ``gradio_client``, and the deep size of
that session's entry in Gradio's state holder: our ``Analysis`` plus Gradio's own copy of the last
value of every component on the page (the plots' JSON included).

**Whether memory comes back**, measured from outside: ``python -m archplay --port <free> --host
127.0.0.1 --device cpu --max-sessions 5`` in its own process; its resident memory (VmRSS of the
server and any process it started) is read at a *baseline* (after one warm-up Run of each
built-in and a settle), sampled every 0.25 s during a phase for the *peak*, and read again
*after* the phase once the sessions have ended (each client closed) and the cap has evicted them
(``CAP`` fresh sessions, each one cheap ``/card`` call, push the last Runs out), ``SETTLE_S``
seconds later so that the server's periodic trim (every 5 s) has run. Phases: ``SESSIONS``
visitors, ``WORKERS`` at a time, each a new ``gradio_client`` session doing one ``/analyse`` on
its own story text (the built-ins in turn), for N = 50 then N = 200; then a burst of
``LATENCY_CALLS`` concurrent ``/latency`` calls (the Compare tab's chart: untraced passes up to
2,048 tokens, on stretched copies beyond a model's context).

Target: after ≤ baseline + 150 MB. Why 150: with the cap at 5, at most 5 Runs stay (built-ins:
about 6 MB each, 13 MB with Gradio's copies), and a Python process's heap does not shrink to its
exact start (interned strings, caches, Gradio's per-session bookkeeping of the 5 sessions it
keeps); 150 MB is a tenth of what 200 sessions used to leave (1.2 GB with the cap at 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.report import descendants, free_port, print_table, stop

ROOT = Path(__file__).resolve().parents[1]

CAP = 5  # the server's --max-sessions
SESSIONS, QUICK_SESSIONS = (50, 200), (12,)
WORKERS = 4  # visitors at once (the server runs 4 model events at a time)
TEXT_CHARS = 1_000  # each visitor's story text: about 250 tokens for the built-ins' tokenizer (their limit 256)
LATENCY_CALLS, QUICK_LATENCY_CALLS = 4, 1
LATENCY_MODELS, QUICK_LATENCY_MODELS = ["gpt", "t5", "moe", "mamba"], ["gpt", "mamba"]
SETTLE_S = 15.0  # after a phase: a few of the server's trims (it trims every 5 s)
SAMPLE_S = 0.25
TARGET_MB = 150
READY_TIMEOUT_S = 180.0
SENTENCE = "Mia has a red ball. She"


def row(case: str, measure: str, value: str, target: str = "", met: bool | None = None, raw=None) -> dict:
    return {"section": "sessions", "case": case, "measure": measure, "value": value, "target": target, "met": met,
            "raw": raw}  # fmt: skip


# --------------------------------------------------------------------------- what one Run holds


def story_texts() -> str:
    from archplay.models import story

    return " ".join(s.text for s in story.make_splits(seed=0, n_train=0, n_valid=120, n_test=0)["validation"])


def gpt2_sized(folder: Path) -> None:
    """A GPT-2-sized checkpoint (``GPT2Config()``: 12 layers, 12 heads, 768 wide, 50,257 tokens), random
    weights, and a small word-level tokenizer, written to ``folder``; nothing is downloaded."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    T.GPT2LMHeadModel(T.GPT2Config()).eval().save_pretrained(folder)
    words = sorted(set(story_texts().replace(".", " . ").split()))
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                              eos_token="</s>").save_pretrained(folder)  # fmt: skip


def run_bytes(entry, text: str) -> tuple[int, int, dict]:
    """(tokens, bytes held, bytes per field) of the Analysis a Run of ``text`` leaves."""
    from archplay.app.session import _tensors, record, traced_run
    from archplay.app.tokens import encode

    ids, cut = encode(entry, text)
    a = record(entry, text, ids, cut, traced_run(entry, ids))
    parts = {}
    for f in dataclasses.fields(a):
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors(getattr(a, f.name))}
        if storages:
            parts[f.name] = sum(storages.values())
    return len(ids), a.nbytes(), parts


def deep_bytes(obj, seen: set | None = None, storages: set | None = None) -> int:
    """Python's size of ``obj`` and everything it reaches through containers, dataclasses and plain
    objects' ``__dict__``; a tensor counts its storage once."""
    seen = set() if seen is None else seen
    storages = set() if storages is None else storages
    if id(obj) in seen or isinstance(obj, type):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        s = obj.untyped_storage()
        if s.data_ptr() in storages:
            return 0
        storages.add(s.data_ptr())
        return s.nbytes()
    n = sys.getsizeof(obj)
    if isinstance(obj, dict):
        n += sum(deep_bytes(k, seen, storages) + deep_bytes(v, seen, storages) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        n += sum(deep_bytes(x, seen, storages) for x in obj)
    elif dataclasses.is_dataclass(obj):
        n += sum(deep_bytes(getattr(obj, f.name), seen, storages) for f in dataclasses.fields(obj))
    elif hasattr(obj, "__dict__") and not callable(obj) and type(obj).__module__.split(".")[0] not in ("gradio",):
        n += deep_bytes(vars(obj), seen, storages)
    return n


def session_bytes(catalog, text: str) -> dict:
    """Per built-in: the deep size of one session in Gradio's state holder after one ``/analyse``
    (``state``: our Analysis; ``page``: Gradio's copy of every component's last value)."""
    from gradio_client import Client

    from archplay.app.main import build_app

    demo = build_app(catalog)
    demo.queue(default_concurrency_limit=4, max_size=64)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            ssr_mode=False, state_session_capacity=100)  # fmt: skip
    out = {}
    keys = catalog.keys()
    try:
        for key in keys:
            client = Client(url, verbose=False)
            try:
                client.predict(key, text, 0, 0, 1.0, 0, 1.0, api_name="/analyse")
                session = demo.state_holder.session_data[client.session_hash]
                storages: set = set()
                state = deep_bytes(session.state_data, set(), storages)
                page = deep_bytes(session.config_values, set(), storages)
                big = max(session.config_values.values(), key=lambda c: deep_bytes(c))
                out[key] = {"state": state, "page": page,
                            "largest": (big.get("props", {}).get("elem_id"), deep_bytes(big))}  # fmt: skip
            finally:
                client.close()
    finally:
        demo.close()
    return out


def held_rows(quick: bool) -> list[dict]:
    from archplay.app.catalog import Catalog
    from archplay.app.tokens import PAGE_MAX_TOKENS

    catalog = Catalog.from_names([], "cpu", log=lambda m: None)
    long = story_texts()
    per, raw, keys = [], {}, catalog.keys()
    for key in keys:
        entry = catalog.get(key)
        n1, b1, _ = run_bytes(entry, SENTENCE)
        n2, b2, parts = run_bytes(entry, long)
        raw[key] = {"sentence": [n1, b1], "longest": [n2, b2], "parts": parts}
        per.append(f"{key} {b1 / 1e6:.2f} / {b2 / 1e6:.1f} MB ({n2} tokens)")
    longest = max(v["longest"][1] for v in raw.values())
    rows = [row("one Run, built-ins",
                "bytes its Analysis holds: a sentence / the longest Run (the page's limit or the context)",
                "; ".join(per), "≤ 12 MB", longest <= 12e6, raw)]  # fmt: skip
    if not quick:
        with tempfile.TemporaryDirectory() as tmp:
            gpt2_sized(Path(tmp) / "gpt2")
            entry = Catalog("cpu").add(str(Path(tmp) / "gpt2"))
            n, b, parts = run_bytes(entry, " ".join(long.split()[: 2 * PAGE_MAX_TOKENS]))
            del entry
        split = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in parts.items())
        value = f"{b / 1e6:.0f} MB at {n} tokens ({split} MB)"
        rows.append(row("one Run, GPT-2-sized checkpoint (124 M, random weights)", "bytes its Analysis holds", value,
                        raw={"tokens": n, "bytes": b, "parts": parts}))  # fmt: skip
    text = long[:TEXT_CHARS]
    sizes = session_bytes(catalog, text)
    parts = [f"{k} {v['state'] / 1e6:.1f} + {v['page'] / 1e6:.1f} MB" for k, v in sizes.items()]
    worst = max(sizes.items(), key=lambda kv: kv[1]["page"])
    largest = f" (largest: {worst[0]}'s {worst[1]['largest'][0]}, {worst[1]['largest'][1] / 1e6:.1f} MB)"
    rows.append(row(f"one session after /analyse ({TEXT_CHARS:,} characters of story)",
                    "bytes: our Analysis + Gradio's copy of the page's last outputs", "; ".join(parts) + largest,
                    raw=sizes))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- the server, from outside


def _env() -> dict[str, str]:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """``python -m archplay`` on a free loopback port with ``--max-sessions cap``; ``close()`` stops it."""

    def __init__(self, device: str = "cpu", cap: int = CAP):
        port = free_port()
        cmd = [sys.executable, "-m", "archplay", "--port", str(port), "--host", "127.0.0.1", "--device", device,
               "--max-sessions", str(cap)]  # fmt: skip
        self.cap = cap
        self.url = f"http://127.0.0.1:{port}/"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
        stop(self.proc)
        raise RuntimeError("the app did not start: " + " | ".join(self.lines[-5:]))

    def _read(self) -> None:  # keeps the pipe from filling; the tail explains a failure
        for line in self.proc.stdout:
            self.lines = [*self.lines[-20:], line.rstrip()]

    def rss_mb(self) -> float:
        """Resident memory of the server and everything it started (VmRSS), MB."""
        return sum(_rss_kib(p) for p in [self.proc.pid, *descendants(self.proc.pid)]) / 1024

    def close(self) -> None:
        stop(self.proc)


class Peak:
    """The largest ``server.rss_mb()`` seen while the ``with`` block runs (sampled every SAMPLE_S)."""

    def __init__(self, server: Server):
        self.server, self.mb, self._done = server, 0.0, threading.Event()

    def __enter__(self):
        self.mb = self.server.rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.mb = max(self.mb, self.server.rss_mb())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.mb = max(self.mb, self.server.rss_mb())


def visit(url: str, api: str, *args) -> str | None:
    """One new session making one call, then leaving (its client closed): None, or what went wrong."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        return f"connect: {type(e).__name__}: {e}"
    try:
        client.predict(*args, api_name=api)
        return None
    except Exception as e:  # noqa: BLE001
        return f"{api}: {type(e).__name__}: {str(e)[:120]}"
    finally:
        client.close()


def evict_and_settle(server: Server, settle: float = SETTLE_S) -> float:
    """As many fresh sessions as the cap (one cheap call each) push the last Runs out; then wait
    ``settle`` seconds for the server's trim and read its memory (MB)."""
    for _ in range(server.cap):
        visit(server.url, "/card", "gpt")
    time.sleep(settle)
    return server.rss_mb()


def session_phase(server: Server, n: int, texts: list[str], models: list[str], workers: int = WORKERS,
                  settle: float = SETTLE_S) -> dict:  # fmt: skip
    """``n`` visitors, ``workers`` at a time, each one /analyse on its own text; memory before, peak, after."""
    before = server.rss_mb()
    jobs = [(models[i % len(models)], texts[i % len(texts)]) for i in range(n)]
    t0 = time.perf_counter()
    with Peak(server) as peak, ThreadPoolExecutor(workers) as pool:
        errors = [e for e in pool.map(lambda j: visit(server.url, "/analyse", j[0], j[1], 0, 0, 1.0, 0, 1.0), jobs)
                  if e]  # fmt: skip
    wall = time.perf_counter() - t0
    after = evict_and_settle(server, settle)
    return {"sessions": n, "before_mb": before, "peak_mb": peak.mb, "after_mb": after, "wall_s": wall,
            "errors": errors}  # fmt: skip


def latency_phase(server: Server, calls: int, models: list[str]) -> dict:
    before = server.rss_mb()
    t0 = time.perf_counter()
    with Peak(server) as peak, ThreadPoolExecutor(calls) as pool:
        errors = [e for e in pool.map(lambda _: visit(server.url, "/latency", models), range(calls)) if e]
    wall = time.perf_counter() - t0
    time.sleep(SETTLE_S)
    return {"calls": calls, "models": models, "before_mb": before, "peak_mb": peak.mb, "after_mb": server.rss_mb(),
            "wall_s": wall, "errors": errors}  # fmt: skip


def visitor_texts(n: int = 40) -> list[str]:
    """``n`` different story texts of ``TEXT_CHARS`` characters (overlapping windows of the stories)."""
    stories, step = story_texts(), TEXT_CHARS // 4
    return [stories[i * step : i * step + TEXT_CHARS] for i in range(n)]


def server_rows(quick: bool, device: str) -> list[dict]:
    from archplay.models import BUILTIN_NAMES

    texts = visitor_texts()
    models = list(BUILTIN_NAMES)
    server = Server(device)
    try:
        cold = server.rss_mb()
        for key in models:  # a first Run of each model: one-off costs (lazy imports, kernels) are not per visitor
            visit(server.url, "/analyse", key, texts[0], 0, 0, 1.0, 0, 1.0)
        baseline = evict_and_settle(server)
        phases = [session_phase(server, n, texts, models) for n in (QUICK_SESSIONS if quick else SESSIONS)]
        lat = latency_phase(server, *((QUICK_LATENCY_CALLS, QUICK_LATENCY_MODELS) if quick
                                      else (LATENCY_CALLS, LATENCY_MODELS)))  # fmt: skip
    finally:
        server.close()
    rows = [row(f"server, --max-sessions {CAP}, idle",
                "resident memory: at start / baseline (one Run of each built-in, sessions evicted, settled)",
                f"{cold:.0f} / {baseline:.0f} MB", raw={"cold_mb": cold, "baseline_mb": baseline})]  # fmt: skip
    for p in [*phases, lat]:
        calls = f"{p.get('calls')} /latency call{'s' if p.get('calls') != 1 else ''}"
        what = (f"{p['sessions']} sessions, one /analyse each ({WORKERS} at a time)" if "sessions" in p
                else f"{calls} at once ({', '.join(p['models'])})")  # fmt: skip
        grown = p["after_mb"] - baseline
        fails = f"; {len(p['errors'])} errors" if p["errors"] else ""
        rows.append(row(what, f"resident: baseline · before · peak · after (ended, evicted, {SETTLE_S:.0f} s on)",
                        f"{baseline:.0f} · {p['before_mb']:.0f} · {p['peak_mb']:.0f} · {p['after_mb']:.0f} MB: after "
                        f"is {grown:+.0f} MB from baseline; {p['wall_s']:.0f} s{fails}",
                        f"after ≤ baseline + {TARGET_MB} MB", grown <= TARGET_MB and not p["errors"],
                        {**p, "baseline_mb": baseline}))  # fmt: skip
    return rows


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    return held_rows(quick) + server_rows(quick, device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SESSIONS[0]} sessions, one /latency call, no GPT-2")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the app's --device (default: cpu)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows = run(quick=args.quick, device=args.device)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
