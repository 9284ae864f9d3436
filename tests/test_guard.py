"""The server against a hostile visitor: fair queueing, abandoned events, closed routes, the login page.

Each test drives a real ``python -m archplay`` on 127.0.0.1 over HTTP, as an outside client would
(``app.guard`` reads gradio's queue, which is not public API: these tests hold it to the
installed gradio).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import app_server

from archplay.app.guard import GRACE, HEAVY_WAITING, PER_SESSION


def _request(url: str, body: dict | None = None, *, data: bytes | None = None, headers=None) -> tuple[int, str]:
    if body is not None:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with app_server(tmp_path_factory.mktemp("guard")) as url:
        status, config = _request(url + "config")
        assert status == 200
        ids = {d.get("api_name"): d["id"] for d in json.loads(config)["dependencies"] if d.get("api_name")}
        yield url, ids


def _join(url: str, fn_index: int, data: list, session: str) -> tuple[int, str]:
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    return _request(url + "gradio_api/queue/join", body)


def test_routes_the_page_never_needs_and_unknown_names_answer_404(server):
    url, ids = server
    upload = b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\nhello\r\n--x--\r\n'
    status, _ = _request(url + "gradio_api/upload", data=upload,
                         headers={"Content-Type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert status == 404
    assert _request(url + "gradio_api/call/no_such_endpoint", {"data": []})[0] == 404
    assert _request(url + "gradio_api/call/v2/no_such_endpoint", {"data": []})[0] == 404
    assert _join(url, 10_000, [], "someone")[0] == 404
    assert _join(url, ids["distribution"], [None, 1.0, 0, 1.0, 0], "someone")[0] == 200  # the server still serves


def test_one_session_cannot_fill_the_queue_and_abandoned_events_are_dropped(server):
    url, ids = server
    story = "Mia finds a big red ball. She throws the ball to Tom. Then Tom"
    hostile = [_join(url, ids["generate"], ["mamba", story, 200, 1.0, 0, 1.0, i], "hostile")
               for i in range(4 + PER_SESSION + 3)]  # fmt: skip
    refused = [text for status, text in hostile if status != 200]
    # 4 model runs at once (every event that runs a model shares one group), PER_SESSION more may wait.
    assert len(refused) == 3 and all(f"At most {PER_SESSION}" in text for text in refused), hostile
    # The latency chart, the most expensive event, runs one at a time with few waiting, from
    # everyone together: fresh session names do not get around it.
    charts = [_join(url, ids["latency"], [["gpt", "bert", "t5", "moe", "mamba"]], f"s{i}") for i in range(8)]
    refused = [text for status, text in charts if status != 200]
    assert len(refused) == 8 - 1 - HEAVY_WAITING and all("latency measurements" in t for t in refused), charts
    # Another visitor's model run and redraw still get in.
    assert _join(url, ids["analyse"], ["gpt", "Mia has a red ball."], "visitor")[0] == 200
    assert _join(url, ids["distribution"], [None, 1.0, 0, 1.0, 0], "visitor")[0] == 200
    # Nobody ever listened for the hostile session's results: after the grace period its events
    # are dropped (waiting ones removed, running ones told to stop), so it may join again.
    deadline = time.monotonic() + GRACE + 60
    while time.monotonic() < deadline:
        time.sleep(2)
        again = [_join(url, ids["generate"], ["mamba", story, 200, 1.0, 0, 1.0, 0], "hostile") for _ in range(2)]
        if all(status == 200 for status, _ in again):
            break
    assert all(status == 200 for status, _ in again)


def test_the_login_page_reveals_nothing_and_wrong_passwords_are_slowed(tmp_path):
    with app_server(tmp_path, "--auth", "teacher:s3cret", "--models-dir", str(tmp_path)) as url:
        status, page = _request(url)
        assert status == 200 and '"auth_required":true' in page
        for secret in ('"latency"', '"analyse"', "mamba", str(tmp_path)):
            assert secret not in page
        login = "application/x-www-form-urlencoded"
        started = time.monotonic()
        for _ in range(5):
            status, _ = _request(url + "login", data=b"username=teacher&password=wrong", headers={"Content-Type": login})
            assert status == 400
        assert time.monotonic() - started >= 5 * 0.9  # a second after each wrong password
        status, text = _request(url + "login", data=b"username=teacher&password=s3cret", headers={"Content-Type": login})
        assert status == 429 and "Too many failed logins" in text  # locked for a minute, even with the right one
        assert _request(url + "gradio_api/upload", data=b"x", headers={"Content-Type": "text/plain"})[0] == 404
