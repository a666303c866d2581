"""Finding: one diagnosis, with the evidence that supports it and what to change."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("high", "medium", "low", "info")


@dataclass(frozen=True)
class Finding:
    rule: str  # which rule fired, e.g. "near_zero_activations"
    severity: str  # one of SEVERITIES
    layer: str | None  # the layer it is about (None: the whole run)
    steps: tuple[int, int] | None  # first and last step of the evidence
    evidence: str  # the numbers, in words
    remedy: str  # what to change
    layers: tuple[str, ...] = field(default_factory=tuple)  # every layer involved, when several

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps) if self.steps is not None else None
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        steps = tuple(d["steps"]) if d.get("steps") is not None else None
        return cls(d["rule"], d["severity"], d.get("layer"), steps, d["evidence"], d["remedy"],
                   tuple(d.get("layers", ())))
