"""Per-session memory: what a Run holds, and memory given back (``app.memory``, ``app.session``).

Here: the allocator calls work and really return freed memory; a Run holds each tensor once,
compactly, at the size its shapes say; and a scaled-down server run (8 visitors, a cap of 2) ends
near its baseline. The full measurement (50 and 200 visitors, the latency chart) is
``python -m bench.sessions``.
"""

from __future__ import annotations

import platform
import threading

import pytest
import torch
from conftest import make_hf_model

from archplay.app import memory, session
from archplay.app.catalog import Catalog
from archplay.app.tokens import encode

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas and malloc_trim are glibc's")
MB = 1e6


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu", builtins=("gpt",), log=lambda m: None)


# --------------------------------------------------------------------------- app.memory


def test_memory_calls_return_without_error():
    assert isinstance(memory.limit_arenas(), bool)
    assert isinstance(memory.trim(), bool)
    assert isinstance(memory.trim(collect=True), bool)
    with pytest.raises(ValueError):
        memory.limit_arenas(0)


@glibc
def test_on_glibc_the_calls_take_effect_and_rss_is_read():
    assert memory.available()
    assert memory.limit_arenas(memory.ARENAS) is True
    rss = memory.rss_bytes()
    assert rss is not None and 10 * MB < rss < 64e9


@glibc
def test_trim_returns_freed_memory_that_free_alone_keeps():
    """A worker thread allocates 160 MB in 64 kB blocks (below the mmap threshold: malloc's heap),
    keeps every 16th and frees the rest: the freed pages lie between kept blocks, so free() cannot
    return them and the process stays large; trim() hands them back."""
    kept, rss = [], {}

    def work():
        blocks = [bytearray(b"x" * 65536) for _ in range(2560)]  # 168 MB, every page touched
        kept.extend(blocks[::16])
        del blocks
        rss["freed"] = memory.rss_bytes()

    start = memory.rss_bytes()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    held = rss["freed"] - start
    memory.trim()
    trimmed = memory.rss_bytes() - start
    kept.clear()
    memory.trim()
    assert held > 100 * MB, f"the freed blocks should still be resident before the trim ({held / MB:.0f} MB)"
    assert trimmed < held - 100 * MB, f"trim gave back {(held - trimmed) / MB:.0f} of {held / MB:.0f} MB"


# --------------------------------------------------------------------------- what a Run holds


def expected_bytes(cfg, T: int) -> int:
    """A decoder Run's size from its shapes alone, float32: maps, logits, hidden states, once each."""
    maps = cfg.n_layer * cfg.n_head * T * T
    logits = T * cfg.vocab_size
    hidden = (cfg.n_layer + 1) * T * cfg.d_model
    return 4 * (maps + logits + hidden)


def test_a_runs_bytes_are_what_its_shapes_say(catalog):
    entry = catalog.get("gpt")
    text = "Mia has a red ball. She throws the ball to Tom. " * 40
    ids, cut = encode(entry, text)
    a = session.record(entry, text, ids, cut, session.traced_run(entry, ids))
    T = len(ids)
    assert T == min(int(entry.config.max_seq_len), 512)  # the longest Run the page makes of this model
    assert a.nbytes() == expected_bytes(entry.config, T)
    assert a.nbytes() < 6.5 * MB  # 6.2 MB measured at 256 tokens (README, bench.sessions)


def test_views_into_a_larger_batch_are_copied_compactly(catalog):
    """A trace whose tensors are rows of a larger batch (views): kept as they are, each would keep
    the whole batch alive (twice the bytes here); the Analysis holds compact copies of the same values."""
    entry = catalog.get("gpt")
    text = "Mia has a red ball. She"
    ids, _ = encode(entry, text)
    with torch.inference_mode():
        out = entry.model(torch.tensor([ids, ids]), trace=True)  # batch of 2
    trace = out.trace.detach(0)
    assert trace.attentions[0].untyped_storage().nbytes() == 2 * trace.attentions[0].nbytes  # views, as given
    run = session.TracedRun(logits=out.logits[0].detach(), trace=trace, translation=None)
    a = session.record(entry, text, ids, None, run)
    assert a.nbytes() == expected_bytes(entry.config, len(ids))
    for kept, given in zip(a.attentions, out.trace.attentions):
        assert torch.equal(kept, given[0])
    assert torch.equal(a.logits, out.logits[0])
    for kept, given in zip(a.hidden_states, out.trace.hidden_states):
        assert torch.equal(kept, given[0])


def test_a_512_token_run_with_a_gpt2_vocabulary_stays_under_its_bound(tmp_path):
    """A GPT-2-like checkpoint (50,257 tokens, tiny otherwise) at 512 tokens: the logits (T, V) are
    most of it (103 MB), held once; nothing else of that size is kept."""
    make_hf_model("gpt2", tmp_path / "g", vocab_size=50257, n_positions=512)
    entry = Catalog("cpu").add(str(tmp_path / "g"))
    text = " ".join(["the cat sat on the mat and the dog ran to the park"] * 50)
    ids, _ = encode(entry, text)
    assert len(ids) == 512
    a = session.record(entry, text, ids, None, session.traced_run(entry, ids))
    assert a.nbytes() == expected_bytes(entry.config, 512)
    assert a.nbytes() < 112 * MB


# --------------------------------------------------------------------------- the server gives it back


def test_the_server_returns_to_near_its_baseline_after_sessions_end():
    """A scaled-down ``bench.sessions``: 8 visitors' Runs on a server that keeps 2, then 2 fresh
    sessions push the last Runs out. Measured: without the arena limit and the trim the server stayed
    90 to 164 MB above its baseline; with them 22 to 37 MB."""
    from bench.sessions import Server, evict_and_settle, session_phase, visit, visitor_texts

    texts = visitor_texts(8)
    server = Server("cpu", cap=2)
    try:
        visit(server.url, "/analyse", "gpt", texts[0], 0, 0, 1.0, 0, 1.0)  # one-off costs of a first Run
        baseline = evict_and_settle(server, settle=6.0)  # the server trims every 5 s
        r = session_phase(server, 8, texts, ["gpt"], workers=2, settle=6.0)
    finally:
        server.close()
    assert r["errors"] == []
    assert r["after_mb"] - baseline <= 75, (
        f"baseline {baseline:.0f}, peak {r['peak_mb']:.0f}, after {r['after_mb']:.0f} MB"
    )
