"""findings.json: reading and writing a run's diagnosis."""

from __future__ import annotations

from pathlib import Path

from ..errors import RunError
from ..runs.store import atomic_write_json, read_json
from .findings import SEVERITIES, Finding

FINDINGS_FILE = "findings.json"


def save_findings(run_dir: str | Path, findings: list[Finding]) -> Path:
    path = Path(run_dir) / FINDINGS_FILE
    atomic_write_json(path, [f.to_dict() for f in findings])
    return path


def load_findings(run_dir: str | Path) -> list[Finding]:
    """The findings saved in a run folder ([] when it has none); RunError when findings.json is damaged."""
    path = Path(run_dir) / FINDINGS_FILE
    if not path.exists():
        return []
    rows = read_json(path)
    if not isinstance(rows, list):
        raise RunError(f"{path} is not a JSON list of findings; the run folder is damaged")
    for i, row in enumerate(rows):
        problem = _finding_problem(row)
        if problem:
            raise RunError(f"{path}: finding {i} {problem}; the run folder is damaged (`convscope diagnose` "
                           "rewrites it)")
    return [Finding.from_dict(row) for row in rows]


def _finding_problem(row: object) -> str | None:
    """What makes `row` unusable as a Finding (None: usable); tables and reports format every field."""
    if not isinstance(row, dict):
        return "is not a JSON object"
    for key in ("rule", "severity", "evidence", "remedy"):
        if not isinstance(row.get(key), str):
            return f"has no text for {key!r}"
    if row["severity"] not in SEVERITIES:
        return f"has an unknown severity {row['severity']!r}"
    if row.get("layer") is not None and not isinstance(row["layer"], str):
        return "has a layer that is not text"
    steps = row.get("steps")
    if steps is not None and not (isinstance(steps, list) and len(steps) == 2
                                  and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)):
        return "has steps that are not two whole numbers"
    layers = row.get("layers", [])
    if not (isinstance(layers, list) and all(isinstance(name, str) for name in layers)):
        return "has layers that are not a list of text"
    return None
