"""Several sessions on one server at once (a scaled-down ``bench.load``), and what the server
refuses to hand out. The full 32 × 25 run is ``python -m bench.load`` (its result is in the README)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from bench.load import run_load, session_texts, start_server
from bench.report import stop


def test_session_texts_are_told_apart_by_last_word_and_length():
    texts = session_texts(32)
    assert len({(t.split()[-1], len(t.split())) for t in texts}) == 32


def test_concurrent_sessions_see_only_their_own_work():
    r = run_load(sessions=8, requests=10)
    assert r["errors"] == [] and r["crosstalk"] == []
    assert sum(v["n"] for v in r["latency_ms"].values()) == 80  # every request answered
    assert r["rss_after_mb"] - r["rss_before_mb"] <= 200


def test_the_server_does_not_serve_arbitrary_files_or_take_uploads():
    proc, url = start_server()
    try:
        for path in ("gradio_api/file=/etc/passwd", "gradio_api/file=../../etc/passwd",
                     "gradio_api/file=assets/checkpoints/gpt/config.json", "file=/etc/passwd"):  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + path, timeout=10).read()
            assert e.value.code in (403, 404), path
        import httpx

        big = httpx.post(url + "gradio_api/upload", files={"files": ("big.bin", b"\0" * (11 * 2**20))}, timeout=30)
        small = httpx.post(url + "gradio_api/upload", files={"files": ("small.txt", b"hello")}, timeout=30)
        # The page has no file input, so the upload route is closed to everyone, big or small.
        assert big.status_code == 404 and small.status_code == 404
    finally:
        stop(proc)


def test_the_server_keeps_the_runs_of_at_most_max_sessions_visitors():
    from gradio_client import Client

    proc, url = start_server("cpu", "--max-sessions", "2")
    try:
        a, b, c = (Client(url, verbose=False) for _ in range(3))

        def run(client, text):
            client.predict("gpt", text, 0, 0, 1.0, 0, 1.0, api_name="/analyse")

        def redraw(client) -> tuple[str, str]:
            plot, note = client.predict(0.7, 0, 0.9, api_name="/distribution")[:2]
            return (plot or {}).get("plot", ""), note

        run(a, "Mia has a red ball. Then Mia")
        assert "(position" in redraw(a)[0] and "Mia" in redraw(a)[0]
        run(b, "Tom has a big box. Then Tom")
        assert "(position" in redraw(a)[0]  # two visitors fit
        run(c, "Sara has a pink letter. Then Sara")  # a third: the least recently used (b) is dropped
        assert "Mia" in redraw(a)[0] and "Sara" in redraw(c)[0]
        plot, note = redraw(b)  # (b comes back as a new, empty session, and now a is the one dropped)
        assert plot == "" and "Press Run" in note  # told what to do, not an error
        run(b, "Tom has a big box. Then Tom")  # pressing Run again works
        assert "Tom" in redraw(b)[0]
    finally:
        stop(proc)
