"""`convscope rerun RUN --apply-remedies`: train a run again with the settings its findings ask for.

Each finding carries its remedy as settings (Finding.change: {"bn": True}, {"lr": "x0.1"}, ...). The rerun
starts from the run's own config.json (same seed, data and model), applies the changes of its findings that
ask for a change (severity high, medium or low), most severe first, so that when two findings name the same
setting the more severe one decides, and trains into a new run folder. What could not be applied is said,
never dropped silently: a setting this kind of run does not have (BatchNorm is simple_cnn's switch, not a
`--model`'s) or a value the settings refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from convscope.config import TrainConfig
from convscope.errors import ConfigError, RunError
from convscope.runs.findings import SEVERITIES, Finding, load_findings
from convscope.runs.store import read_json

ACTING = ("high", "medium", "low")  # the severities whose findings ask for a change ("info" does not)
# The settings a remedy may change, and their kind: a factor applies to numbers only.
SETTINGS = {"lr": float, "wd": float, "bs": int, "epochs": float, "bn": bool, "schedule": str, "precision": str}


@dataclass(frozen=True)
class Applied:
    setting: str
    before: Any
    after: Any
    rule: str


@dataclass(frozen=True)
class NotApplied:
    setting: str
    asked: Any
    rule: str
    why: str


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a `convscope train` run was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the folder that `convscope train` printed")
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise RunError(f"{path} is not a JSON object of settings; the run folder is damaged")
    if "source" in saved:  # watch(), Lightning, fastai: the loop is the user's, not ours to run again
        raise RunError(f"{run_dir} was recorded by {saved['source']}, not `convscope train`: rerun needs the "
                       "settings of a convscope train run; apply the findings' remedies in your own loop")
    names = {f.name for f in fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in names})
    except TypeError as exc:
        raise RunError(f"{path} does not describe a convscope train run ({exc})") from None
    except ConfigError as exc:
        raise RunError(f"{path}: {exc}; the run folder is damaged") from None


def _value(before: Any, asked: Any, kind: type) -> Any:
    """The new value of a setting: `asked` itself, or before x factor for "x<factor>"."""
    if isinstance(asked, str) and asked.startswith("x") and kind in (int, float):
        factor = float(asked[1:])
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor {asked!r} is not a positive number")
        value = before * factor
        return max(1, round(value)) if kind is int else value
    if kind is bool and not isinstance(asked, bool):
        raise ValueError(f"{asked!r} is not true or false")
    if kind in (int, float) and (isinstance(asked, bool) or not isinstance(asked, (int, float))):
        raise ValueError(f"{asked!r} is not a number")
    if kind is str and not isinstance(asked, str):
        raise ValueError(f"{asked!r} is not text")
    return asked


def remedied(cfg: TrainConfig, findings: list[Finding]) -> tuple[TrainConfig, list[Applied], list[NotApplied]]:
    """`cfg` with the findings' changes applied, what was applied, and what was not (with why)."""
    applied: dict[str, Applied] = {}
    skipped: list[NotApplied] = []
    settings: dict[str, Any] = {}
    for f in sorted(findings, key=lambda f: SEVERITIES.index(f.severity)):
        if f.severity not in ACTING:
            continue
        for setting, asked in f.change.items():
            if setting in applied:
                skipped.append(NotApplied(setting, asked, f.rule, f"already set by {applied[setting].rule}"))
                continue
            if setting not in SETTINGS:
                skipped.append(NotApplied(setting, asked, f.rule, "not a convscope train setting"))
                continue
            if setting == "bn" and cfg.model:
                skipped.append(NotApplied(setting, asked, f.rule, f"--model {cfg.model} builds its own layers"))
                continue
            before = getattr(cfg, setting)
            try:
                after = _value(before, asked, SETTINGS[setting])
                replace(cfg, **settings, **{setting: after})  # the settings' own checks
            except (ValueError, ConfigError) as exc:
                skipped.append(NotApplied(setting, asked, f.rule, str(exc)))
                continue
            if after == before:
                skipped.append(NotApplied(setting, asked, f.rule, f"already {before!r}"))
                continue
            settings[setting] = after
            applied[setting] = Applied(setting, before, after, f.rule)
    return replace(cfg, **settings), list(applied.values()), skipped


def findings_of(run_dir: str | Path) -> list[Finding]:
    """The run's findings.json, or a fresh diagnosis when it has none."""
    findings = load_findings(run_dir)
    if findings:
        return findings
    from convscope.diagnose import diagnose
    from convscope.runs.run import load_run

    return diagnose(load_run(run_dir))
