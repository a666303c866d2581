"""`convscope view`'s web server: the page, plotly.min.js, and the runs as JSON. Read-only, local.

No URL is ever joined to a file path: the page's three files come from a fixed table, and a run is named by
an id that must be one of the runs found in the given folders (runs/discover.py, which leaves out symlinks
that lead outside them). Every other path is answered 404, every method but GET and HEAD 405. The files
inside a run folder are read only where they resolve inside one of the given folders (a stats.npz linked
to a file elsewhere reads as missing).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from convscope.errors import ConfigError, ConvscopeError
from convscope.runs.discover import find_runs, is_run, runs_under, study_kind
from convscope.view.assets import plotly_js_path, static_text
from convscope.view.data import FileCache, file_version, hist_json, run_json

HOST = "127.0.0.1"


@dataclass
class RunEntry:
    id: str
    name: str
    path: Path
    group: str  # the folder it was found in, as given
    study: str | None  # 'lr-study' or 'bs-sweep' when it is one of a study's runs


@dataclass
class RunIndex:
    """The runs in the given folders, found again on every listing (a run started later appears)."""

    roots: list[Path]
    _entries: dict[str, RunEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> list[RunEntry]:
        entries: list[RunEntry] = []
        for k, root in enumerate(self.roots):
            runs = [root] if is_run(root) else runs_under(root)
            for run in runs:
                rel = "." if run == root else run.relative_to(root).as_posix()
                name = root.name if run == root else rel
                entries.append(RunEntry(f"{k}:{rel}", name, run, str(root), study_kind(run.parent)))
        with self._lock:
            self._entries = {e.id: e for e in entries}
        return entries

    def get(self, run_id: str) -> RunEntry | None:
        with self._lock:
            entry = self._entries.get(run_id)
        if entry is None:  # a run that appeared since the last listing
            entry = {e.id: e for e in self.refresh()}.get(run_id)
        return entry

    def inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return any(resolved.is_relative_to(root.resolve()) for root in self.roots)


def check_roots(paths: list[str]) -> list[Path]:
    """The given folders, each checked to be a folder. One without runs yet is fine: the page lists the
    runs started there later (`convscope view runs/` before `convscope train`)."""
    roots = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            find_runs(path)  # says, in one line, that it does not exist or is a file
        roots.append(path)
    return roots


class _Handler(BaseHTTPRequestHandler):
    server: ViewHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- http.server's own name
        """Quiet: the page polls every two seconds, and a line per request would bury the URL."""

    # Every method http.server dispatches besides GET and HEAD: the server only reads.
    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n", "text/plain",
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        routes: dict[str, Callable[[dict[str, str]], tuple[bytes, str]]] = {
            "/": lambda q: (static_text("index.html").encode(), "text/html; charset=utf-8"),
            "/view.js": lambda q: (static_text("view.js").encode(), "text/javascript; charset=utf-8"),
            "/plotly.min.js": lambda q: (plotly_js_path().read_bytes(), "text/javascript; charset=utf-8"),
            "/api/runs": self._runs,
            "/api/run": self._run,
            "/api/hist": self._hist,
        }
        route = routes.get(url.path)  # the raw path: "/%2e%2e/x", "/../x", "//etc" match nothing
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        try:
            body, kind = route(query)
        except _NotFound as exc:
            self._send(HTTPStatus.NOT_FOUND, f"{exc}\n".encode(), "text/plain")
            return
        except (ConvscopeError, ValueError) as exc:  # a damaged run file (named), a bad query number
            body = json.dumps({"error": str(exc)}).encode()
            self._send(HTTPStatus.UNPROCESSABLE_ENTITY, body, "application/json")
            return
        self._send(HTTPStatus.OK, b"" if head else body, kind, length=len(body))

    def _send(self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    # ------------------------------------------------------------------- the API
    def _json(self, obj: Any) -> tuple[bytes, str]:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode(), "application/json"

    def _entry(self, query: dict[str, str]) -> RunEntry:
        entry = self.server.index.get(query.get("id", ""))
        if entry is None or not is_run(entry.path):
            raise _NotFound(f"no run {query.get('id', '')!r} in the folders this server was given")
        return entry

    def _runs(self, query: dict[str, str]) -> tuple[bytes, str]:
        entries = self.server.index.refresh()
        return self._json({"roots": [str(r) for r in self.server.index.roots], "runs": [
            {"id": e.id, "name": e.name, "group": e.group, "study": e.study, "version": file_version(e.path)}
            for e in entries]})

    def _run(self, query: dict[str, str]) -> tuple[bytes, str]:
        entry = self._entry(query)
        if query.get("version") and query["version"] == file_version(entry.path):
            return self._json({"id": entry.id, "unchanged": True})  # nothing flushed since: four stat() calls
        last = query.get("last")
        return self._json(run_json(entry.path, steps_have=int(query.get("steps", 0)),
                                   rows_have=int(query.get("rows", 0)), rows_last=None if last in (None, "") else
                                   int(last), cache=self.server.cache, run_id=entry.id, name=entry.name))

    def _hist(self, query: dict[str, str]) -> tuple[bytes, str]:
        entry = self._entry(query)
        last = query.get("last")
        try:
            hist = hist_json(entry.path, query.get("layer", ""), rows_have=int(query.get("rows", 0)),
                             rows_last=None if last in (None, "") else int(last), cache=self.server.cache)
        except KeyError as exc:
            raise _NotFound(str(exc)) from None
        return self._json({"id": entry.id, **hist})


class _NotFound(Exception):
    pass


class ViewHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C never waits for a browser's open connection
    block_on_close = False  # nor does server_close() join a handler still answering

    def __init__(self, roots: list[Path], port: int = 0) -> None:
        self.index = RunIndex(roots)
        self.index.refresh()
        self.cache = FileCache(allowed=self.index.inside)
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as exc:
            if port and exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise ConfigError(f"port {port} on {HOST} is in use; choose another --port, or leave it out for "
                                  "a free one") from None
            if port and exc.errno == 13:
                raise ConfigError(f"port {port} on {HOST} needs privileges to listen on; choose a --port above "
                                  "1023, or leave it out for a free one") from None
            raise

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closed its page (or reloaded it) while an answer was on its way: nothing went wrong
        # here, and socketserver's default would print a traceback for it.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def make_server(paths: list[str], port: int = 0) -> ViewHTTPServer:
    """A server for the runs in `paths` (not yet serving): every check first, so that bad input is one line."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (0 or none: a free port), got {port}")
    plotly_js_path()  # plotly missing: say so now, not as a blank page
    return ViewHTTPServer(check_roots(paths), port)

