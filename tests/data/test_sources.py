"""Dataset registry, folder search order, and downloads against a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from convscope.data import DATASETS, MnistData, cache_dir, download_dataset, find_dataset, load_dataset, sources
from convscope.errors import DataError, DownloadError

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _link_files(src: Path, dest: Path, names=FILES, uncompressed: bool = False) -> Path:
    """Make `dest` hold the real files (as symlinks, to avoid copying 40 MB per test)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dest / (name.removesuffix(".gz") if uncompressed else name)
        target.symlink_to(src / name)
    return dest


# --- registry -------------------------------------------------------------------------------------------


def _readme_table(readme: str, section: str) -> dict[str, tuple[int, str, str]]:
    body = readme.split(f"## {section}/", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\S+\.gz) \| (\d+) \| ([0-9a-f]{32}) \| ([0-9a-f]{64}) \|$", body, re.M)
    return {name: (int(size), md5, sha) for name, size, md5, sha in rows}


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_registry_matches_readme_and_real_files(data_root: Path, name: str) -> None:
    table = _readme_table((data_root / "README.md").read_text(), name)
    assert sorted(table) == sorted(FILES)
    spec = DATASETS[name]
    assert {f.filename: (f.size, f.md5, f.sha256) for f in spec.files.values()} == table
    for filename, (size, md5, sha) in table.items():
        data = (data_root / name / filename).read_bytes()
        digests = (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())
        assert (len(data), *digests) == (size, md5, sha)
    assert len(spec.classes) == 10 and spec.mirrors


def test_class_names() -> None:
    assert list(DATASETS["mnist"].classes) == [str(d) for d in range(10)]
    assert DATASETS["fashion-mnist"].classes[0] == "T-shirt/top"
    assert DATASETS["fashion-mnist"].classes[9] == "Ankle boot"


# --- search order ---------------------------------------------------------------------------------------


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CONVSCOPE_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "convscope"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "convscope"


def test_explicit_root_direct_or_with_subfolder(data_root: Path, mnist_dir: Path) -> None:
    assert find_dataset("mnist", root=mnist_dir) == mnist_dir
    assert find_dataset("mnist", root=data_root) == mnist_dir
    assert find_dataset("fashion-mnist", root=data_root) == data_root / "fashion-mnist"
    assert find_dataset("MNIST", root=str(data_root)) == mnist_dir  # names are case-insensitive


def test_explicit_root_wins_over_env_and_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mnist_dir: Path, isolated_env: Path
) -> None:
    mine = _link_files(mnist_dir, tmp_path / "mine")
    monkeypatch.setenv("CONVSCOPE_DATA", str(mnist_dir.parent))
    _link_files(mnist_dir, isolated_env / "mnist")
    assert find_dataset("mnist", root=mine) == mine


def test_explicit_root_without_files_is_an_error_not_a_download(tmp_path: Path, mnist_dir: Path) -> None:
    partial = _link_files(mnist_dir, tmp_path / "partial", names=FILES[:2])
    with pytest.raises(DataError) as info:
        # A mirror that would be hit if find_dataset fell through to a download.
        find_dataset("mnist", root=partial, mirrors=["http://127.0.0.1:9/"])
    assert type(info.value) is DataError
    msg = str(info.value)
    assert str(partial) in msg and "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "train-images" not in msg
    with pytest.raises(DataError, match="no such folder"):
        find_dataset("mnist", root=tmp_path / "nowhere")
    sub = _link_files(mnist_dir, tmp_path / "top" / "mnist", names=FILES[1:])
    with pytest.raises(DataError, match=rf"{re.escape(str(sub))}: missing train-images-idx3-ubyte.gz;"):
        find_dataset("mnist", root=tmp_path / "top")


def test_env_var_wins_over_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mnist_dir: Path, isolated_env: Path
) -> None:
    env_root = tmp_path / "env"
    _link_files(mnist_dir, env_root / "mnist")
    cached = _link_files(mnist_dir, isolated_env / "mnist")
    monkeypatch.setenv("CONVSCOPE_DATA", str(env_root))
    assert find_dataset("mnist") == env_root / "mnist"
    monkeypatch.delenv("CONVSCOPE_DATA")
    assert find_dataset("mnist") == cached


def test_env_var_without_the_dataset_falls_through_to_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mnist_dir: Path, isolated_env: Path
) -> None:
    monkeypatch.setenv("CONVSCOPE_DATA", str(tmp_path / "empty"))
    cached = _link_files(mnist_dir, isolated_env / "mnist")
    assert find_dataset("mnist", download=False) == cached


def test_uncompressed_files_are_accepted(tmp_path: Path, mnist_dir: Path) -> None:
    # Symlinks named without .gz still hold gzip data: the reader detects that by content.
    folder = _link_files(mnist_dir, tmp_path / "raw", uncompressed=True)
    assert find_dataset("mnist", root=folder) == folder
    data = load_dataset("mnist", root=folder)
    assert data.test_images.shape == (10000, 28, 28)


def test_nothing_found_without_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_env: Path
) -> None:
    monkeypatch.setenv("CONVSCOPE_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        find_dataset("fashion-mnist", download=False)
    msg = str(info.value)
    assert str(tmp_path / "env" / "fashion-mnist") in msg and str(isolated_env / "fashion-mnist") in msg
    assert "root=" in msg and "CONVSCOPE_DATA" in msg and "\n" not in msg


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar10'; known datasets: mnist, fashion-mnist"):
        find_dataset("cifar10")
    with pytest.raises(DataError, match="known datasets"):
        load_dataset("cifar10")


# --- load_dataset ---------------------------------------------------------------------------------------


def test_load_dataset_from_root(data_root: Path, mnist_dir: Path) -> None:
    data = load_dataset("mnist", root=data_root)
    assert isinstance(data, MnistData) and data.name == "mnist" and data.source == mnist_dir
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (60000,) and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (10000, 28, 28) and data.test_labels.shape == (10000,)
    assert data.classes == [str(d) for d in range(10)]
    assert data.image_shape == (1, 28, 28) and data.n_classes == 10


def test_load_dataset_from_folder_path(tmp_path: Path, fashion_dir: Path) -> None:
    folder = _link_files(fashion_dir, tmp_path / "my-digits")
    data = load_dataset(str(folder))
    assert data.name == "my-digits" and data.classes == [str(d) for d in range(10)]
    assert data.test_images.shape == (10000, 28, 28)
    partial = _link_files(fashion_dir, tmp_path / "partial", names=FILES[:3])
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz"):
        load_dataset(str(partial))


# --- a real HTTP server ---------------------------------------------------------------------------------


class _Server:
    """Serves shared/data/<dataset>/<file> under several behaviours, counting every request.

    /good/...        the real file
    /corrupt/...     same size, one byte flipped in the middle
    /truncated/...   announces the full Content-Length, sends half, closes
    /long/...        the real file plus extra bytes
    /missing/...     404
    /flaky<k>/...    503 for the first k requests of each file, then the real file
    """

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.handle(self)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, route: str, dataset: str = "mnist") -> str:
        return f"{self.base}/{route}/{dataset}/"

    def count(self, route: str, filename: str | None = None) -> int:
        return sum(n for path, n in self.requests.items()
                   if path.startswith(f"/{route}/") and (filename is None or path.endswith(filename)))

    def _blob(self, rel: str) -> bytes | None:
        with self.lock:
            if rel not in self._blobs:
                path = self.data_root / rel
                self._blobs[rel] = path.read_bytes() if path.is_file() else None
            return self._blobs[rel]

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests[req.path] += 1
            seen = self.requests[req.path]
        route, _, rel = req.path.lstrip("/").partition("/")
        blob = self._blob(rel)
        if blob is None or route == "missing":
            req.send_error(404, "Not Found")
            return
        if route.startswith("flaky") and seen <= int(route.removeprefix("flaky")):
            req.send_error(503, "Service Unavailable")
            return
        body, length = blob, len(blob)
        if route == "corrupt":
            mid = len(blob) // 2
            body = blob[:mid] + bytes([blob[mid] ^ 0xFF]) + blob[mid + 1 :]
        elif route == "truncated":
            body = blob[: len(blob) // 2]
        elif route == "long":
            body = blob + b"extra bytes"
            length = len(body)
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Content-Length", str(length))
        req.end_headers()
        try:
            req.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. on an over-long body): expected
        req.close_connection = True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(data_root: Path):
    srv = _Server(data_root)
    yield srv
    srv.close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a port that was just free: connecting there is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _assert_same_as_source(dest: Path, source: Path, names=FILES) -> None:
    for name in names:
        assert (dest / name).read_bytes() == (source / name).read_bytes(), name


def _assert_empty(folder: Path) -> None:
    """No file under a final name and no leftover temp file."""
    leftovers = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert leftovers == []


def _download(name: str, dest: Path, mirrors: list[str], **kw) -> Path:
    return download_dataset(name, dest, mirrors=mirrors, backoff=0, timeout=10, **kw)


def test_download_success(server: _Server, tmp_path: Path, mnist_dir: Path) -> None:
    dest = tmp_path / "dl"
    assert _download("mnist", dest, [server.url("good")]) == dest
    _assert_same_as_source(dest, mnist_dir)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no temp files left
    assert all(server.count("good", f) == 1 for f in FILES)


def test_already_present_files_are_not_fetched_again(
    server: _Server, tmp_path: Path, mnist_dir: Path
) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / FILES[0]).write_bytes((mnist_dir / FILES[0]).read_bytes())  # verified copy: kept
    (dest / FILES[1]).write_bytes(b"not the labels")  # fails verification: replaced
    _download("mnist", dest, [server.url("good")])
    assert server.count("good", FILES[0]) == 0 and server.count("good", FILES[1]) == 1
    _assert_same_as_source(dest, mnist_dir)
    _download("mnist", dest, [server.url("good")])
    assert server.count("good") == 3


def test_corrupt_mirror_falls_back_to_next(server: _Server, tmp_path: Path, mnist_dir: Path) -> None:
    dest = tmp_path / "dl"
    _download("mnist", dest, [server.url("corrupt"), server.url("good")])
    _assert_same_as_source(dest, mnist_dir)
    # A checksum mismatch is not transient: one request per file at the bad mirror, no retries.
    assert all(server.count("corrupt", f) == 1 for f in FILES)


@pytest.mark.parametrize(
    ("route", "reason", "requests"),
    [
        ("corrupt", "checksum mismatch", 1),
        ("truncated", f"truncated: got {9912422 // 2} of 9912422 bytes after 3 tries", 3),
        ("long", "longer than the expected 9912422 bytes", 1),
        ("missing", "HTTP 404 Not Found", 1),
        ("flaky9", "HTTP 503 Service Unavailable after 3 tries", 3),
    ],
)
def test_bad_mirror_alone_raises_and_leaves_nothing(
    server: _Server, tmp_path: Path, route: str, reason: str, requests: int
) -> None:
    dest = tmp_path / "dl"
    url = server.url(route)
    with pytest.raises(DownloadError) as info:
        _download("mnist", dest, [url])
    msg = str(info.value)
    assert f"{url}train-images-idx3-ubyte.gz: {reason}" in msg and "\n" not in msg
    assert server.count(route, FILES[0]) == requests
    _assert_empty(dest)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every back-off sleep between two tries at one mirror (one entry per retry)."""
    slept: list[float] = []
    monkeypatch.setattr(sources.time, "sleep", slept.append)
    return slept


def test_connection_refused_is_not_retried(tmp_path: Path, closed_port_url: str, sleeps: list[float]) -> None:
    # Nothing listens there (a mirror gone, or offline): a retry a second later would only delay the error.
    dest = tmp_path / "dl"
    with pytest.raises(DownloadError) as info:
        _download("mnist", dest, [closed_port_url, closed_port_url.replace("/mnist/", "/other/")], retries=3)
    assert str(info.value).count("connection refused;") == 2 and "tries" not in str(info.value)
    assert sleeps == []
    _assert_empty(dest)


def test_name_that_does_not_resolve_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sleeps: list[float]
) -> None:
    # Offline, the resolver fails every name at once; it is made to here, so no real DNS server is asked.
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    mirrors = ["http://mirror-a.invalid/mnist/", "http://mirror-b.invalid/mnist/"]
    with pytest.raises(DownloadError) as info:
        _download("mnist", tmp_path / "dl", mirrors, retries=3)
    assert str(info.value).count("temporary failure in name resolution;") == 2 and sleeps == []


def test_offline_failure_names_every_way_to_supply_the_files(
    isolated_env: Path, closed_port_url: str
) -> None:
    with pytest.raises(DownloadError) as info:
        find_dataset("mnist", mirrors=[closed_port_url])
    msg = str(info.value)
    assert msg.startswith(f"could not download mnist/train-images-idx3-ubyte.gz: {closed_port_url}")
    assert "--data-root" in msg and "CONVSCOPE_DATA" in msg and str(isolated_env / "mnist") in msg
    assert "\n" not in msg


def test_download_on_a_terminal_shows_a_progress_bar(
    monkeypatch: pytest.MonkeyPatch, server: _Server, tmp_path: Path, mnist_dir: Path
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv("TERM", raising=False)  # a TERM=dumb from the test runner would turn the bar off
    _download("mnist", tmp_path / "dl", [server.url("good")])
    _assert_same_as_source(tmp_path / "dl", mnist_dir)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())  # without the cursor/colour codes
    for name, size in zip(FILES, ("9.9/9.9 MB", "28.9/28.9 kB", "1.6/1.6 MB", "4.5/4.5 kB")):
        assert re.search(rf"mnist/{re.escape(name)} .* {size} .* verified", shown), (name, shown[-800:])


def test_download_elsewhere_prints_one_line_per_file(
    capsys: pytest.CaptureFixture[str], server: _Server, tmp_path: Path
) -> None:
    _download("mnist", tmp_path / "dl", [server.url("good")])
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"downloaded mnist/{name} ({size / 1e6:.1f} MB) from {server.url('good')}{name}, checksums "
                     "verified" for name, size in zip(FILES, (9912422, 28881, 1648877, 4542))]
    _download("mnist", tmp_path / "quiet", [server.url("good")], progress=False)
    assert capsys.readouterr().err == ""


def test_every_mirror_reason_is_listed(server: _Server, tmp_path: Path, closed_port_url: str) -> None:
    dest = tmp_path / "dl"
    mirrors = [server.url("missing"), server.url("corrupt"), closed_port_url]
    with pytest.raises(DownloadError) as info:
        _download("mnist", dest, mirrors, retries=1)
    msg = str(info.value)
    assert re.search(r"404.*checksum mismatch.*connection refused", msg), msg
    assert msg.startswith("could not download mnist/train-images-idx3-ubyte.gz") and str(dest) in msg
    _assert_empty(dest)


def test_retries_recover_from_transient_errors(server: _Server, tmp_path: Path, mnist_dir: Path) -> None:
    dest = tmp_path / "dl"
    _download("mnist", dest, [server.url("flaky2")], retries=3)
    _assert_same_as_source(dest, mnist_dir)
    assert all(server.count("flaky2", f) == 3 for f in FILES)


def test_find_dataset_downloads_into_cache(server: _Server, isolated_env: Path, mnist_dir: Path) -> None:
    # Half the files already in the cache: only the others are fetched.
    _link_files(mnist_dir, isolated_env / "mnist", names=FILES[2:])
    folder = find_dataset("mnist", mirrors=[server.url("good")])
    assert folder == isolated_env / "mnist"
    assert server.count("good") == 2 and server.count("good", FILES[2]) == 0
    _assert_same_as_source(folder, mnist_dir)
    data = load_dataset("mnist", mirrors=[server.url("missing")])  # cached now: no download attempted
    assert data.source == folder and data.train_images.shape == (60000, 28, 28)
    assert server.count("missing") == 0
