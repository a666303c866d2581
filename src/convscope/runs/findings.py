"""Finding: one diagnosis, with the evidence that supports it and what to change; findings.json, a run's
diagnosis on disk.

The type lives with the run folder's other files because both sides use it: the diagnosis rules write
findings, and training writes one when the NaN guard stops a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convscope.errors import RunError
from convscope.runs.store import atomic_write_json, read_json

# The one list of severities, worst first (findings are sorted by it); "info" asks for no change. The CLI's
# colours and report.html's row styles are keyed by it (tests/diagnose/test_severities.py: one for each).
SEVERITIES = ("high", "medium", "low", "info")


@dataclass(frozen=True)
class Finding:
    rule: str  # which rule fired, e.g. "near_zero_activations"
    severity: str  # one of SEVERITIES
    layer: str | None  # the layer it is about (None: the whole run)
    steps: tuple[int, int] | None  # first and last step of the evidence
    evidence: str  # the numbers, in words
    remedy: str  # what to change, in words
    layers: tuple[str, ...] = field(default_factory=tuple)  # every layer involved, when several
    # The remedy as `convscope train` settings, for `convscope rerun --apply-remedies`: a value to set
    # ({"bn": True}) or, for a number, a factor written "x<factor>" ({"lr": "x0.1"}). Empty: nothing to set.
    change: dict[str, Any] = field(default_factory=dict)
    # The training step at which the finding first became true while the run trained (the rules run on the
    # statistics as they grow, experiments/live_findings.py); None when it was only found after training.
    found_at: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def _repr_html_(self) -> str:
        from convscope.runs.display import findings_html

        return findings_html([self])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps) if self.steps is not None else None
        d["layers"] = list(self.layers)
        d["change"] = dict(self.change)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        steps = tuple(d["steps"]) if d.get("steps") is not None else None
        return cls(d["rule"], d["severity"], d.get("layer"), steps, d["evidence"], d["remedy"],
                   tuple(d.get("layers", ())), dict(d.get("change", {})), d.get("found_at"))


class Findings(list):
    """A list of Finding that shows itself as a table in Jupyter (what diagnose and load_findings return)."""

    def _repr_html_(self) -> str:
        from convscope.runs.display import findings_html

        return findings_html(self)


FINDINGS_FILE = "findings.json"


def save_findings(run_dir: str | Path, findings: list[Finding]) -> Path:
    path = Path(run_dir) / FINDINGS_FILE
    atomic_write_json(path, [f.to_dict() for f in findings])
    return path


def load_findings(run_dir: str | Path) -> Findings:
    """The findings saved in a run folder ([] when it has none); RunError when findings.json is damaged."""
    path = Path(run_dir) / FINDINGS_FILE
    if not path.exists():
        return Findings()
    rows = read_json(path)
    if not isinstance(rows, list):
        raise RunError(f"{path} is not a JSON list of findings; the run folder is damaged")
    for i, row in enumerate(rows):
        problem = _finding_problem(row)
        if problem:
            raise RunError(f"{path}: finding {i} {problem}; the run folder is damaged (`convscope diagnose` "
                           "rewrites it)")
    return Findings(Finding.from_dict(row) for row in rows)


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
    found_at = row.get("found_at")
    if found_at is not None and (isinstance(found_at, bool) or not isinstance(found_at, int)):
        return "has a found_at that is not a whole number"
    layers = row.get("layers", [])
    if not (isinstance(layers, list) and all(isinstance(name, str) for name in layers)):
        return "has layers that are not a list of text"
    change = row.get("change", {})
    if not (isinstance(change, dict) and all(isinstance(v, (bool, int, float, str)) for v in change.values())):
        return "has a change that is not an object of settings"
    return None
