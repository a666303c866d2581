"""The run directory: writing it safely and reading it back without the model.

Layout (the contract between training, diagnosis and the report; readable with numpy + json alone):

    <run>/config.json     settings and versions
    <run>/metrics.jsonl   one JSON object per epoch
    <run>/steps.npz       per optimizer step: step, epoch, loss, lr, mom (fp16 runs: skipped)
    <run>/stats.npz       activation statistics (when recorded)
    <run>/checkpoint/     model.safetensors + state.json
    <run>/report.html     self-contained report

Every file is written to a temporary name in the same folder and renamed into place, so a reader (or a
run killed mid-write) only ever sees a whole previous version or a whole new one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import RunError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename; an OSError names `path` (the file meant,
    not the temporary one), so a full or read-only disk can be reported with the right file."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete what writes killed mid-way (SIGKILL, power loss) left in a run folder: `.NAME.*.tmp` files of
    atomic writes and a half-written `.checkpoint.tmp/`. Never a finished file: those have their own names.
    For a resume, which owns the folder; a run still writing there would lose its temporary file."""
    import shutil

    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error (OSError picks the subclass from errno), about `path`."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path)) if exc.errno else exc


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, default=_json_default) + "\n" for row in rows)
    atomic_write_bytes(path, text.encode())


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (tuple, set, Path)):
        return list(obj) if not isinstance(obj, Path) else str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def create_run_dir(parent: str | Path, name: str) -> Path:
    """Make `parent/name`, refusing to reuse an existing folder (a run never overwrites another)."""
    parent = Path(parent)
    path = parent / name
    if parent.exists() and not parent.is_dir():  # else mkdir's FileExistsError would read "already exists"
        raise RunError(f"--out {parent} is a file, not a folder; choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        raise RunError(f"run folder {path} already exists; choose another --name or --out") from None
    except OSError as exc:
        raise RunError(f"cannot create run folder {path}: {exc.strerror}; choose a writable --out") from None
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing: is this a convscope run folder?") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise RunError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None
    except RecursionError:  # json gives up on thousands of nested brackets
        raise RunError(f"{path} is nested too deeply to be convscope's JSON; the run folder is damaged") from None
    except OSError as exc:  # a folder where the file should be, no read permission, ...
        raise RunError(f"{path} cannot be read ({exc.strerror or exc}); check the run folder") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a missing file is an empty list."""
    if not Path(path).exists():
        return []
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as exc:
        raise RunError(f"{path} is not UTF-8 text ({exc}); the run folder is damaged") from None
    except OSError as exc:
        raise RunError(f"{path} cannot be read ({exc.strerror or exc}); check the run folder") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, an integer of > 4300 digits
            raise RunError(f"{path} line {i} is not valid JSON ({exc}); the run folder is damaged") from None
        if not isinstance(row, dict):  # readers index rows by name: a list or a number there is damage
            raise RunError(f"{path} line {i} is not a JSON object; the run folder is damaged")
        rows.append(row)
    return rows


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz file (no pickled objects allowed); a missing file is an empty dict."""
    if not Path(path).exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        # A damaged .npz fails deep inside zipfile, zlib or numpy's header parser, with whatever error
        # they pick (BadZipFile, zlib.error, KeyError, NotImplementedError, MemoryError, ...): all of them
        # mean the same thing here, and the file was read as data only (no pickles), so none is a bug.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")  # one line
        raise RunError(f"{path} cannot be read as .npz ({detail}); the run folder is damaged") from None
