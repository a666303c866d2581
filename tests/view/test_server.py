"""`convscope view`'s server on real runs: the API's answers, and that it reads only inside the folders it
was given (traversal in every spelling, absolute paths, symlinks out) and writes nothing."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from convscope.errors import ConfigError, RunError
from convscope.view.server import make_server

SECRET = "not-for-the-browser-0451"


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def served(book_runs, tmp_path):
    """A server of `tmp/runs` (copies of the two runs, a symlink to a run outside it, a run whose stats.npz
    links to a file outside), beside `tmp/outside` holding a secret."""
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    runs.mkdir()
    outside.mkdir()
    for run in book_runs.values():
        shutil.copytree(run, runs / run.name)
    (outside / "secret.txt").write_text(SECRET)
    shutil.copytree(book_runs["bn"], outside / "elsewhere")
    (outside / "elsewhere" / "config.json").write_text(json.dumps({"note": SECRET}))
    (runs / "link").symlink_to(outside / "elsewhere")
    shutil.copytree(book_runs["bn"], runs / "linked-stats")
    (runs / "linked-stats" / "stats.npz").unlink()
    (runs / "linked-stats" / "stats.npz").symlink_to(outside / "elsewhere" / "stats.npz")
    server = make_server([str(runs)], 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    before = snapshot(tmp_path)
    yield server, runs, outside
    server.shutdown()
    server.server_close()
    assert snapshot(tmp_path) == before, "the server changed a file"


def request(server, path: str, method: str = "GET") -> tuple[int, bytes]:
    """The path sent exactly as written (http.client does not normalise it, as a browser would)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_lists_the_runs_inside_and_leaves_out_a_symlink_out(served):
    server, runs, _ = served
    status, body = request(server, "/api/runs")
    assert status == 200
    listed = json.loads(body)["runs"]
    assert sorted(r["name"] for r in listed) == ["bn", "linked-stats", "no-bn"]
    assert SECRET.encode() not in body


def test_a_run_as_json_and_unchanged_when_nothing_was_flushed(served):
    server, runs, _ = served
    status, body = request(server, "/api/run?id=0:no-bn")
    assert status == 200
    d = json.loads(body)
    with np.load(runs / "no-bn" / "steps.npz") as steps:
        np.testing.assert_allclose(d["steps"]["loss"], steps["loss"], rtol=1e-5)
    status, body = request(server, f"/api/run?id=0:no-bn&version={d['version']}")
    assert (status, json.loads(body)) == (200, {"id": "0:no-bn", "unchanged": True})
    status, body = request(server, "/api/hist?id=0:no-bn&layer=conv1.act")
    assert status == 200 and json.loads(body)["layer"] == "conv1.act"
    # a stats.npz that links outside the folder reads as missing: no statistics, and no histograms
    status, body = request(server, "/api/run?id=0:linked-stats")
    assert status == 200 and json.loads(body)["stats"] is None
    assert request(server, "/api/hist?id=0:linked-stats&layer=conv1.act")[0] == 422


@pytest.mark.parametrize("path", [
    "/../outside/secret.txt", "/%2e%2e/outside/secret.txt", "/%2E%2E%2Foutside%2Fsecret.txt",
    "/..%2foutside/secret.txt",
    "//etc/passwd", "/etc/passwd", "/static/../../outside/secret.txt", "/view.js/../../outside/secret.txt",
    "/runs/no-bn/config.json", "/no-bn/stats.npz", "/api/run?id=0:link", "/api/run?id=0:../outside/elsewhere",
    "/api/run?id=0:..%2Foutside%2Felsewhere", "/api/run?id=0:no-bn/../../outside/elsewhere", "/api/run?id=%2Fetc",
    "/api/run", "/api/hist?id=0:link&layer=conv1.act", "/api/hist?id=0:no-bn&layer=../../secret",
])
def test_nothing_outside_the_given_folders(served, path):
    server, runs, outside = served
    for p in (path, path.replace("/outside/", f"{outside}/")):
        status, body = request(server, p)
        assert status in (403, 404), (p, status)
        assert SECRET.encode() not in body


def test_an_absolute_path_is_not_a_file_path(served):
    server, _, outside = served
    status, body = request(server, str(outside / "secret.txt"))
    assert status == 404 and SECRET.encode() not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only(served, method):
    server, _, _ = served
    assert request(server, "/api/run?id=0:no-bn", method)[0] == 405


def test_page_and_plotly_are_served(served):
    server, _, _ = served
    status, page = request(server, "/")
    assert status == 200 and b'<script src="plotly.min.js">' in page
    import plotly

    status, js = request(server, "/plotly.min.js")
    bundled = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert status == 200 and js == bundled.read_bytes()


def test_a_busy_port_and_a_missing_folder_are_refused(served, tmp_path):
    server, runs, _ = served
    with pytest.raises(ConfigError, match=f"port {server.server_address[1]} on 127.0.0.1 is in use"):
        make_server([str(runs)], server.server_address[1])
    with pytest.raises(RunError, match="does not exist"):
        make_server([str(tmp_path / "nowhere")], 0)


def test_a_browser_that_leaves_mid_answer_is_no_error(served, capsys, monkeypatch):
    """A page closed while plotly.min.js (~4 MB) is on its way: the write fails with a broken pipe or a
    reset, which the server must take quietly (socketserver's default prints a traceback)."""
    import socket
    import struct
    import sys as _sys
    import time

    from convscope.view.server import ViewHTTPServer

    server, _, _ = served
    seen: list[type] = []
    original = ViewHTTPServer.handle_error

    def recording(self, request_, client_address):
        seen.append(type(_sys.exc_info()[1]))
        original(self, request_, client_address)

    monkeypatch.setattr(ViewHTTPServer, "handle_error", recording)
    for _ in range(20):  # until one write fails (the answer may fit the socket's buffers before the reset)
        sock = socket.create_connection(("127.0.0.1", server.server_address[1]))
        sock.sendall(b"GET /plotly.min.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.recv(1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        if seen:
            break
    assert seen and all(t in (BrokenPipeError, ConnectionResetError) for t in seen), seen
    assert request(server, "/")[0] == 200  # still serving
    assert "Traceback" not in capsys.readouterr().err
