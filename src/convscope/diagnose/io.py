"""findings.json: reading and writing a run's diagnosis."""

from __future__ import annotations

from pathlib import Path

from ..runs.store import atomic_write_json, read_json
from .findings import Finding

FINDINGS_FILE = "findings.json"


def save_findings(run_dir: str | Path, findings: list[Finding]) -> Path:
    path = Path(run_dir) / FINDINGS_FILE
    atomic_write_json(path, [f.to_dict() for f in findings])
    return path


def load_findings(run_dir: str | Path) -> list[Finding]:
    path = Path(run_dir) / FINDINGS_FILE
    return [Finding.from_dict(d) for d in read_json(path)] if path.exists() else []
