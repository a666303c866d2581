"""`convscope rerun RUN --apply-remedies`: train a run again with the settings its findings ask for.

Each finding carries its remedy as settings (Finding.change: {"bn": True}, {"lr": "x0.1"}, ...). The rerun
starts from the run's own config.json (same seed, data and model), applies the changes of its findings that
ask for a change (severity high, medium or low), most severe first, so that when two findings name the same
setting the more severe one decides, and trains into a new run folder. What could not be applied is said,
never dropped silently: a setting this kind of run does not have (BatchNorm is simple_cnn's switch, not a
`--model`'s) or a value the settings refuse.

Three refinements make the rerun a test of the diagnosis, not a guess:
- A remedy that is a change to the model's code ({"init": "default"}, {"unfreeze": True}, {"remove": [...]},
  models/changes.py) goes into TrainConfig.model_changes: the rerun builds the same model from the same
  factory and seed and applies the change to it.
- {"lr": "find:lower"} / {"lr": "find:higher"}: the LR finder's recommended lr_max for the rerun's own model
  and data (what `convscope lr-find` prints), kept on the side the finding names: a finding that says the lr
  is too high never raises it.
- Causes before symptoms: when a finding whose rule names a cause (ROOT_CAUSES: weight decay, the
  initialisation, frozen layers, the output layer, dropout, the activations, the input scale, BatchNorm
  at a tiny batch) asks for a change, the changes of the other findings (their symptoms: collapsed
  activations, small updates, a loss that does not fall) are not applied, and are listed as such. Fixing
  a cause and a symptom at once changes two things, and the symptom's change (a lower lr) is often wrong
  once the cause is gone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from convscope.config import MODEL_CHANGES, TrainConfig
from convscope.errors import ConfigError, RunError
from convscope.runs.findings import SEVERITIES, Finding, load_findings
from convscope.runs.store import read_json

ACTING = ("high", "medium", "low")  # the severities whose findings ask for a change ("info" does not)
# The settings a remedy may change, and their kind: a factor applies to numbers only.
SETTINGS = {"lr": float, "wd": float, "bs": int, "epochs": float, "bn": bool, "schedule": str, "precision": str}
# The rules whose finding names a cause, not a symptom (see above).
ROOT_CAUSES = ("weight_decay_high", "dead_at_init", "init_scale", "frozen_parameters", "loss_floor", "dropout_high",
               "saturated_activations", "input_scale", "batchnorm_small_batch")
LR_FIND = ("find:lower", "find:higher")
LrFinder = Callable[[TrainConfig], float]


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


def remedied(cfg: TrainConfig, findings: list[Finding], find_lr: LrFinder | None = None
             ) -> tuple[TrainConfig, list[Applied], list[NotApplied]]:
    """`cfg` with the findings' changes applied, what was applied, and what was not (with why).

    `find_lr(cfg)` gives the lr an "lr": "find:..." change asks for, on the config with the other changes
    applied (default: the LR finder, `recommended_lr`)."""
    applied: dict[str, Applied] = {}
    skipped: list[NotApplied] = []
    settings: dict[str, Any] = {}
    model_changes: dict[str, Any] = dict(cfg.model_changes)
    acting = sorted((f for f in findings if f.severity in ACTING), key=lambda f: SEVERITIES.index(f.severity))
    causes = [f.rule for f in acting if f.rule in ROOT_CAUSES and f.change]
    lr_asked: tuple[str, str] | None = None
    for f in acting:
        for setting, asked in f.change.items():
            if causes and f.rule not in ROOT_CAUSES:
                skipped.append(NotApplied(setting, asked, f.rule, f"a symptom: the cause {causes[0]} is fixed first"))
                continue
            if setting in applied:
                skipped.append(NotApplied(setting, asked, f.rule, f"already set by {applied[setting].rule}"))
                continue
            if setting in MODEL_CHANGES:
                try:
                    replace(cfg, model_changes={**model_changes, setting: asked})  # the settings' own checks
                except ConfigError as exc:
                    skipped.append(NotApplied(setting, asked, f.rule, str(exc)))
                    continue
                model_changes[setting] = asked
                applied[setting] = Applied(setting, cfg.model_changes.get(setting), asked, f.rule)
                continue
            if setting not in SETTINGS:
                skipped.append(NotApplied(setting, asked, f.rule, "not a convscope train setting"))
                continue
            if setting == "bn" and cfg.model:
                skipped.append(NotApplied(setting, asked, f.rule, f"--model {cfg.model} builds its own layers"))
                continue
            if setting == "lr" and asked in LR_FIND:
                lr_asked = (asked, f.rule)  # resolved below, on the rerun's own model and data
                applied["lr"] = Applied("lr", cfg.lr, asked, f.rule)
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
    new = replace(cfg, **settings, model_changes=model_changes)
    if lr_asked is not None:
        asked, rule = lr_asked
        found = float((find_lr or recommended_lr)(new))
        lr = min(found, cfg.lr / 2) if asked == "find:lower" else max(found, cfg.lr * 2)
        applied["lr"] = Applied("lr", cfg.lr, lr, rule)
        new = replace(new, lr=lr)
    return new, list(applied.values()), skipped


def recommended_lr(cfg: TrainConfig) -> float:
    """The LR finder's recommended lr_max for `cfg`'s model and data (one sweep, as `convscope lr-find`)."""
    from convscope.experiments.lr_find import run_lr_find

    result, _ = run_lr_find(cfg, 1e-7, 10.0, 100, 1)
    return result.recommended_lr_max


def findings_of(run_dir: str | Path) -> list[Finding]:
    """The run's findings.json, or a fresh diagnosis when it has none."""
    findings = load_findings(run_dir)
    if findings:
        return findings
    from convscope.diagnose import diagnose
    from convscope.runs.run import load_run

    return diagnose(load_run(run_dir))
