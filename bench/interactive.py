"""How instant the page feels: a sampler update, and a whole Explore analysis.

1. **Sampler update**: a temperature / top-k / top-p change turned into the new figure from the
   cached logits. Measured twice: the handler alone (``archplay.app.explore.sampling.distribution``), and the
   round trip a browser makes, through the running app with ``gradio_client`` on loopback
   (queue, JSON, HTTP included). At the built-in vocabulary (1,280) and at GPT-2's 50,257
   (a random-weight decoder of that vocabulary).
2. **Analyse**: text → traced forward pass → what the page's Run ships
   (``archplay.app.explore.run.analyse`` and ``payload.explore_payload``), per built-in model, at 32,
   128 and 512 tokens; and the size of what is sent to the browser (the payload's JSON, the MoE
   view's figures, the HTML).

The models run on ``device`` (the cached logits the sampler works from are on the CPU either way).

    python -m bench.interactive [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import json
import time

import torch

from archplay.app.catalog import Catalog
from archplay.app.explore import payload, sampling
from archplay.app.explore import run as explore
from archplay.models import BUILTIN_NAMES, story
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.story.tokenizer import ByteTokenizer
from bench.report import free_port, percentiles

SETTINGS = [(t, k, p) for t in (0.3, 0.7, 1.0, 1.5) for k in (0, 5, 40, 200) for p in (0.5, 0.9, 0.95, 1.0)]  # 64


def big_vocab_registry(catalog: Catalog) -> str:
    """Add a random GPT-2-vocabulary decoder (50,257 tokens, tiny otherwise) as "gpt2-vocab"."""
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50257, d_model=128, n_layer=2, n_head=4, d_ff=512, max_seq_len=512, name="gpt2-vocab",
                        trained=False)  # fmt: skip
    catalog.put("gpt2-vocab", Decoder(cfg).to(catalog.device), ByteTokenizer())
    return "gpt2-vocab"


def story_text(n_tokens: int, tok) -> str:
    """Story-world text of about ``n_tokens`` tokens (for this tokenizer)."""
    stories = story.make_splits(seed=0, n_train=0, n_valid=60, n_test=0)["validation"]
    text = " ".join(s.text for s in stories)
    ids = tok.encode(text)
    return tok.decode(ids[: n_tokens + 1])  # the tokenizer's own specials are added again on encode


def sampler_handler(catalog: Catalog, key: str, changes: int) -> dict:
    text = story_text(64, catalog.get(key).tokenizer)
    a = explore.analyse(catalog, key, text).analysis
    ms = []
    for i in range(changes):
        t, k, p = SETTINGS[i % len(SETTINGS)]
        t0 = time.perf_counter()
        sampling.distribution(catalog, a, t, k, p)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"p50": percentiles(ms)[0], "p95": percentiles(ms)[1], "n": len(ms), "vocab": a.logits.shape[-1]}


class PageProtocol:
    """The page's own way of calling an event: POST ``/gradio_api/queue/join`` with the event's
    inputs (a State travels as null: the server substitutes the session's), then read the answer
    from the ``/gradio_api/queue/data`` event stream. No polling, as in the browser."""

    def __init__(self, url: str, session: str):
        import httpx

        self.url, self.session, self.http = url.rstrip("/"), session, httpx.Client(timeout=60)
        config = self.http.get(f"{self.url}/config").json()
        self.deps = {d.get("api_name"): d for d in config["dependencies"]}

    def call(self, api: str, data: list) -> dict:
        import json

        r = self.http.post(f"{self.url}/gradio_api/queue/join", json={
            "data": data, "fn_index": self.deps[api]["id"], "session_hash": self.session, "event_data": None,
            "trigger_id": None})  # fmt: skip
        event = r.json()["event_id"]
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": self.session}) as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed" and msg.get("event_id") == event:
                        if not msg.get("success"):
                            raise RuntimeError(f"{api} failed: {msg}")
                        return msg["output"]
        raise RuntimeError(f"{api}: the event stream ended without an answer")


def sampler_round_trip(catalog: Catalog, keys: list[str], changes: int) -> dict:
    """Round trips of /distribution through the app on loopback, one session per model: through
    ``gradio_client``, and through the page's own protocol (``PageProtocol``)."""
    from gradio_client import Client

    from archplay.app.main import CSS, THEME, build_app

    demo = build_app(catalog)
    demo.queue(default_concurrency_limit=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                theme=THEME, css=CSS)  # fmt: skip
    out = {}
    try:
        for key in keys:
            page = PageProtocol(f"http://127.0.0.1:{port}/", f"bench-{key}")
            page.call("analyse", [key, story_text(64, catalog.get(key).tokenizer), 0, 0, 1.0, 0, 1.0, "encoder", 0, 0])
            ms = []
            for i in range(changes):
                t, k, p = SETTINGS[i % len(SETTINGS)]
                t0 = time.perf_counter()
                page.call("distribution", [None, t, k, p, 0])
                ms.append((time.perf_counter() - t0) * 1000)
            out[f"page:{key}"] = {"p50": percentiles(ms)[0], "p95": percentiles(ms)[1], "n": len(ms)}
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict(key, story_text(64, catalog.get(key).tokenizer), 0, 0, 1.0, 0, 1.0, api_name="/analyse")
            ms = []
            for i in range(changes):
                t, k, p = SETTINGS[i % len(SETTINGS)]
                t0 = time.perf_counter()
                client.predict(t, k, p, api_name="/distribution")
                ms.append((time.perf_counter() - t0) * 1000)
            out[key] = {"p50": percentiles(ms)[0], "p95": percentiles(ms)[1], "n": len(ms)}
            client.close() if hasattr(client, "close") else None
    finally:
        demo.close()
    return out


def response_bytes(catalog: Catalog, r: explore.AnalyseResult) -> int:
    """What one Run sends to the page: the payload its script redraws from (JSON), the MoE view's
    figures, the HTML and markdown (the vocabulary's labels go once per model, not per Run)."""
    a = r.analysis
    shipped = payload.explore_payload(sampling.labels_for_run(catalog, a), a, kind=r.attention_kind, layer=r.layer,
                                      position=None)  # fmt: skip
    size = len(json.dumps(shipped))
    figs = [r.routing.heatmap, r.routing.load] if r.routing is not None else []
    size += sum(len(f.to_json()) for f in figs if f is not None)
    texts = [r.status, r.tokens_html, r.attention_help, r.distribution_note, r.generate_note, r.mask_help]
    if r.routing is not None:
        texts += [r.routing.chips, r.routing.note]
    return size + sum(len(t.encode()) for t in texts if t)


def analyse(catalog: Catalog, key: str, n_tokens: int, repeats: int) -> dict:
    entry = catalog.get(key)
    text = story_text(n_tokens, entry.tokenizer)
    explore.analyse(catalog, key, text, draw=False)  # warm-up
    ms, size, tokens = [], 0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = explore.analyse(catalog, key, text, draw=False)
        a = r.analysis
        payload.explore_payload(sampling.labels_for_run(catalog, a), a, kind=r.attention_kind, layer=r.layer,
                                position=None)  # fmt: skip
        ms.append((time.perf_counter() - t0) * 1000)
        size, tokens = response_bytes(catalog, r), len(r.analysis.ids)
    p50, p95 = percentiles(ms)
    return {"p50": p50, "p95": p95, "bytes": size, "tokens": tokens, "n": repeats}


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    changes = 20 if quick else 200
    catalog = Catalog.from_names([], device=device)
    big = big_vocab_registry(catalog)
    rows = []
    handler = {key: sampler_handler(catalog, key, changes) for key in ("gpt", big)}
    trip = sampler_round_trip(catalog, ["gpt", big], changes)
    for key in ("gpt", big):
        h, t = handler[key], trip[key]
        vocab = f"vocabulary {h['vocab']:,}"
        rows.append(dict(section="sampler update", case=vocab, measure=f"handler, p50 / p95 over {h['n']} changes",
                         value=f"{h['p50']:.1f} / {h['p95']:.1f} ms", target="p95 ≤ 15 ms", met=h["p95"] <= 15,
                         raw=h))  # fmt: skip
        pg = trip[f"page:{key}"]
        rows.append(dict(section="sampler update", case=vocab,
                         measure=f"round trip, the page's protocol (queue + event stream, loopback), p50 / p95 over "
                                 f"{pg['n']}", value=f"{pg['p50']:.1f} / {pg['p95']:.1f} ms", target="p95 ≤ 60 ms",
                         met=pg["p95"] <= 60, raw=pg))  # fmt: skip
        rows.append(dict(section="sampler update", case=vocab,
                         measure=f"round trip through gradio_client, p50 / p95 over {t['n']} (the client polls for "
                                 "answers every 50 ms: its floor, whatever the server)",
                         value=f"{t['p50']:.1f} / {t['p95']:.1f} ms", target="p95 ≤ 60 ms", met=t["p95"] <= 60,
                         raw=t))  # fmt: skip
    lengths = (32, 128) if quick else (32, 128, 512)
    for key in BUILTIN_NAMES:
        res = {n: analyse(catalog, key, n, 3 if quick else (15 if n < 512 else 6)) for n in lengths}
        parts = [f"{r['tokens']}: {r['p50']:.0f} / {r['p95']:.0f} ms, {r['bytes'] / 1e3:.0f} kB" for r in res.values()]
        at128 = res[128]
        rows.append(dict(section="analyse", case=key, measure="tokens: p50 / p95, response size",
                         value="; ".join(parts), target="128 tokens: p95 ≤ 150 ms, ≤ 1 MB",
                         met=at128["p95"] <= 150 and at128["bytes"] <= 1_000_000, raw=res))  # fmt: skip
    return rows


if __name__ == "__main__":
    import argparse

    from bench.report import print_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    a = ap.parse_args()
    print_table(run(a.quick, a.device))
