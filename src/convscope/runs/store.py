"""The run directory: writing it safely and reading it back without the model.

Layout (the contract between training, diagnosis and the report; readable with numpy + json alone):

    <run>/config.json     settings and versions
    <run>/metrics.jsonl   one JSON object per epoch
    <run>/steps.npz       per optimizer step: step, epoch, loss, lr, mom
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

from ..errors import RunError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a missing file is an empty list."""
    if not Path(path).exists():
        return []
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} line {i} is not valid JSON ({exc}); the run folder is damaged") from None
    return rows


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz file (no pickled objects allowed); a missing file is an empty dict."""
    if not Path(path).exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise RunError(f"{path} cannot be read as .npz ({exc}); the run folder is damaged") from None
