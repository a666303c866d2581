"""Fuzzing the readers of files convscope did not necessarily write intact: IDX data and run folders.

Whatever the bytes, the IDX readers raise only `DataError` and the run-folder readers only `RunError` (or
return normally), each with a one-line message: never a numpy, zlib, json or safetensors traceback. Inputs
are random bytes and real files damaged the ways copies and disks damage them (bits flipped, bytes inserted,
deleted or overwritten, files cut short), aimed mostly at headers, where damage changes how a file parses;
and, for run files, well-formed files holding wrong values (a number where a list belongs, an array of the
wrong shape). The run folder is a real one, trained once per session.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convscope import ActivationStatsData, load_run
from convscope.data import read_idx, read_mnist_pair
from convscope.diagnose import load_findings
from convscope.errors import DataError, RunError
from convscope.runs.checkpoint import load_checkpoint


def fuzz(n: int) -> Callable[[Any], Any]:
    """Hypothesis settings for these tests: `n` examples, no deadline (a loaded CI machine is slow), and no
    example database (the tree is shared; the fuzzers are reproducible from their seed output anyway)."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- damaging bytes -------------------------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, original: bytes, hotspots: tuple[int, ...] = ()) -> bytes:
    """`original` with 1-4 edits: flip a bit, set a byte, insert or delete a few bytes, or cut the file.

    Edits land near the start, near the end, near a `hotspot` (e.g. where a zip member or an array header
    begins) or anywhere, so that headers, which decide how the rest is read, get most of the damage.
    """
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(("head", "tail", "hotspot", "anywhere")))
        offset = draw(st.integers(0, 1 << 24))
        n = len(data) + 1
        if where == "head":
            pos = offset % min(n, 64)
        elif where == "tail":
            pos = max(0, len(data) - offset % min(n, 64))
        elif where == "hotspot" and hotspots:
            pos = min(len(data), hotspots[offset % len(hotspots)] + offset % 160)
        else:
            pos = offset % n
        edit = draw(st.sampled_from(("flip", "set", "insert", "delete", "cut")))
        if edit == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and pos < len(data):
            data[pos] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80, ord("9"), ord("{"))))
        elif edit == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif edit == "cut":
            del data[pos:]
    return bytes(data)


def garbage(original: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, alone or after the first bytes of `original` (so its magic number still matches)."""
    return st.one_of(st.binary(max_size=512),
                     st.builds(lambda k, tail: original[:k] + tail, st.integers(0, 64), st.binary(max_size=512)))


def hotspots(data: bytes, *markers: bytes) -> tuple[int, ...]:
    found = []
    for marker in markers:
        start = data.find(marker)
        while start >= 0:
            found.append(start)
            start = data.find(marker, start + 1)
    return tuple(found)


def one_line(exc: BaseException) -> None:
    assert str(exc) and "\n" not in str(exc), repr(exc)


# --- IDX files ------------------------------------------------------------------------------------------


def _idx(code: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + body


@pytest.fixture(scope="module")
def idx_files(data_dir: Path) -> dict[str, bytes]:
    """Small real files: the first 4 t10k images and labels as raw IDX, and the published t10k labels .gz."""
    mnist = data_dir / "mnist"
    images = gzip.decompress((mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels_gz = (mnist / "t10k-labels-idx1-ubyte.gz").read_bytes()
    labels = gzip.decompress(labels_gz)
    return {
        "images": _idx(0x08, (4, 28, 28), images[16 : 16 + 4 * 784]),
        "labels": _idx(0x08, (4,), labels[8:12]),
        "labels.gz": labels_gz,  # the real published file, header and deflate stream as the mirrors serve it
        "images.gz": gzip.compress(_idx(0x08, (4, 28, 28), images[16 : 16 + 4 * 784]), mtime=0),
    }


def idx_or_data_error(read: Callable[..., Any], *args: Any) -> None:
    try:
        read(*args)
    except DataError as exc:
        one_line(exc)
        # Which check refused it, shown by --hypothesis-show-statistics: the fuzzers must reach them all.
        event("DataError: " + re.sub(r"0x[0-9a-f]+|\d+", "N", str(exc).split(": ", 1)[-1])[:30])
    else:
        event("read")


@fuzz(400)
@given(blob=st.one_of(st.binary(max_size=300),
                      st.builds(bytes.__add__, st.sampled_from([b"\x00\x00\x08\x01", b"\x00\x00\x08\x03",
                                                                 b"\x00\x00\x0d\x02", b"\x1f\x8b\x08\x00"]),
                                st.binary(max_size=300))),
       packed=st.booleans())
def test_idx_reader_on_random_bytes(blob: bytes, packed: bool) -> None:
    idx_or_data_error(read_idx, gzip.compress(blob, mtime=0) if packed else blob)


@fuzz(600)
@given(data=st.data(), name=st.sampled_from(["images", "labels", "labels.gz", "images.gz"]), pack=st.booleans())
def test_idx_reader_on_damaged_real_files(idx_files: dict[str, bytes], data: st.DataObject, name: str,
                                          pack: bool) -> None:
    """Damage a real file (raw, or the gzip stream itself); `pack` gzips a damaged raw file afterwards."""
    blob = data.draw(damaged(idx_files[name], hotspots=(0, 4, 8, 12)), label="blob")
    if pack and not name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    idx_or_data_error(read_idx, blob)


@fuzz(300)
@given(data=st.data(), which=st.sampled_from(["images", "labels", "both"]))
def test_mnist_pair_on_damaged_real_files(idx_files: dict[str, bytes], data: st.DataObject, which: str) -> None:
    images, labels = idx_files["images"], idx_files["labels"]
    if which in ("images", "both"):
        images = data.draw(damaged(images, hotspots=(0, 4, 8, 12)), label="images")
    if which in ("labels", "both"):
        labels = data.draw(damaged(labels, hotspots=(0, 4, 8)), label="labels")
    idx_or_data_error(read_mnist_pair, images, labels)


def test_damage_reaches_the_checks(idx_files: dict[str, bytes]) -> None:
    """The fuzzers' inputs are not all rejected at the first check: each kind of damage below is refused by
    a different check, and the intact files read (so a fuzz pass means something)."""
    assert read_mnist_pair(idx_files["images"], idx_files["labels"])[0].shape == (4, 28, 28)
    assert read_idx(idx_files["labels.gz"]).shape == (10000,)
    for blob, message in [(idx_files["labels"][:3], "too short for an IDX header"),
                          (idx_files["labels"][:6], "header declares 1 dimension"),
                          (idx_files["labels"][:-1], "but holds 3 bytes"),
                          (b"\x01" + idx_files["labels"][1:], "bad magic number"),
                          (idx_files["labels.gz"][:100], "gzip stream ends"),
                          (idx_files["labels"][:2] + b"\x07" + idx_files["labels"][3:], "unknown IDX type code")]:
        with pytest.raises(DataError, match=message):
            read_idx(blob)


# --- run folders ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fuzz_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished run: one epoch of real MNIST, limit_train=1024, bs=256 (4 steps), with stats.npz,
    findings.json and a checkpoint; only the slow HTML report is left out."""
    from convscope import TrainConfig
    from convscope.diagnose import diagnose, save_findings
    from convscope.experiments import run_training
    from convscope.stats import ActivationStats

    cfg = TrainConfig(data_root=str(data_dir), limit_train=1024, bs=256, epochs=1, device="cpu",
                      out=str(tmp_path_factory.mktemp("fuzz-run")), name="r")
    result = run_training(cfg, stats=False, cbs=[ActivationStats()])  # stats.npz without the report
    save_findings(result.run_dir, diagnose(load_run(result.run_dir)))
    return result.run_dir


@pytest.fixture(scope="module")
def work_run(fuzz_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the run that the fuzzers damage one file at a time, putting each file back afterwards."""
    path = tmp_path_factory.mktemp("fuzz-work") / "r"
    shutil.copytree(fuzz_run, path)
    return path


def _load_stats(run: Path) -> None:
    stats = ActivationStatsData.load(run / "stats.npz")
    for name in stats.layers:  # what loads must be usable: every layer's series can be taken out
        stats.layer(name)


def _load_run(run: Path) -> None:
    loaded = load_run(run)
    _ = loaded.final_accuracy  # reading it must not fail either
    if loaded.has_stats:
        _load_stats(run)


# Which readers read each file: all of them must return or raise RunError when that file is damaged.
READERS: dict[str, tuple[Callable[[Path], Any], ...]] = {
    "config.json": (_load_run,),
    "metrics.jsonl": (_load_run,),
    "steps.npz": (_load_run,),
    "stats.npz": (_load_stats, _load_run),
    "findings.json": (load_findings,),
    "checkpoint/state.json": (load_checkpoint,),
    "checkpoint/model.safetensors": (load_checkpoint,),
    "checkpoint/optimizer.safetensors": (load_checkpoint,),
    "checkpoint/rng.safetensors": (load_checkpoint,),
}


@contextmanager
def replaced(path: Path, content: bytes) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)


def readers_raise_only_run_error(run: Path, name: str) -> None:
    for read in READERS[name]:
        try:
            read(run)
        except RunError as exc:
            one_line(exc)
            event(f"{name}: RunError")
        else:
            event(f"{name}: read")


def test_intact_run_reads(work_run: Path) -> None:
    """The baseline the fuzzers damage: every reader succeeds on the intact copy."""
    for name in READERS:
        for read in READERS[name]:
            read(work_run)
    assert load_checkpoint(work_run).train_iter == 4
    assert len(load_findings(work_run)) >= 1


@fuzz(700)
@given(data=st.data(), name=st.sampled_from(sorted(READERS)))
def test_run_files_with_damaged_bytes(work_run: Path, data: st.DataObject, name: str) -> None:
    original = (work_run / name).read_bytes()
    spots = hotspots(original, b"PK\x03\x04", b"PK\x01\x02", b"\x93NUMPY")  # zip members, array headers
    content = data.draw(st.one_of(damaged(original, spots), garbage(original)), label="content")
    with replaced(work_run / name, content):
        readers_raise_only_run_error(work_run, name)


# Well-formed files with wrong values: JSON values anywhere in the JSON files, arrays of any shape and
# kind in the .npz files. These get past the parsers, so they test what the readers check afterwards.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _json_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document (as a key path), the document itself included."""
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += _json_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:8]):  # a few entries of long lists (RNG states) are enough
            paths += _json_paths(value, (*prefix, i))
    return paths


def _edit_json(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@fuzz(400)
@given(data=st.data(), name=st.sampled_from(["config.json", "metrics.jsonl", "findings.json",
                                             "checkpoint/state.json"]))
def test_run_json_files_with_wrong_values(work_run: Path, data: st.DataObject, name: str) -> None:
    text = (work_run / name).read_text()
    lines = text.splitlines() if name.endswith(".jsonl") else [text]
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    doc = json.loads(lines[i])
    path = data.draw(st.sampled_from(_json_paths(doc)), label="path")
    delete = bool(path) and data.draw(st.booleans(), label="delete")
    value = None if delete else data.draw(JSON_VALUES, label="value")
    lines[i] = json.dumps(_edit_json(doc, path, value, delete))
    with replaced(work_run / name, ("\n".join(lines) + "\n").encode()):
        readers_raise_only_run_error(work_run, name)


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.float64, np.float32, np.uint8, np.bool_, np.dtype("<U4"),
                           np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


@fuzz(400)
@given(data=st.data(), name=st.sampled_from(["steps.npz", "stats.npz"]))
def test_run_npz_files_with_wrong_arrays(work_run: Path, data: st.DataObject, name: str) -> None:
    original = (work_run / name).read_bytes()
    with np.load(io.BytesIO(original)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    edit = data.draw(st.sampled_from(("drop", "replace", "reshape", "shorten")), label="edit")
    if edit == "drop":
        del arrays[key]
    elif edit == "replace":
        arrays[key] = data.draw(ARRAYS, label="array")
    elif edit == "reshape":
        arrays[key] = arrays[key].reshape(-1) if arrays[key].ndim != 1 else arrays[key][None]
    else:
        arrays[key] = arrays[key][: max(0, len(arrays[key]) - 1)] if arrays[key].ndim else arrays[key][None]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with replaced(work_run / name, buf.getvalue()):
        readers_raise_only_run_error(work_run, name)
