"""Which run folders a path names: a run folder itself, or a folder of runs (a `--out` folder, an lr-study or
a bs-sweep folder, whose schedules and batch sizes are each a run folder inside it).

A run folder is one holding config.json. The commands that read runs (report, diagnose, view, compare) take
any of these paths, so that a study's runs are compared like any others.
"""

from __future__ import annotations

from pathlib import Path

from convscope.errors import RunError

RUN_MARKER = "config.json"
STUDY_FILES = {"lr_study.json": "lr-study", "bs_sweep.json": "bs-sweep"}  # what makes a folder a study
_DEPTH = 2  # runs/<study>/<run>: a --out folder holding studies is searched two levels down


def is_run(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def study_kind(path: Path) -> str | None:
    """'lr-study' or 'bs-sweep' for a study folder, else None."""
    for name, kind in STUDY_FILES.items():
        if (path / name).is_file():
            return kind
    return None


def runs_under(folder: Path, depth: int = _DEPTH) -> list[Path]:
    """The run folders inside `folder` (not `folder` itself), sorted by path, searched `depth` levels down.
    Only folders that resolve inside `folder` count: a symlink to a run elsewhere is left out, so that a
    reader given `folder` never reads outside it."""
    root = folder.resolve()
    found: list[Path] = []

    def walk(path: Path, level: int) -> None:
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:  # unreadable: nothing to list there
            return
        for child in children:
            if not child.resolve().is_relative_to(root):
                continue
            if is_run(child):
                found.append(child)
            elif level > 1:
                walk(child, level - 1)

    walk(folder, depth)
    return found


def find_runs(path: str | Path) -> list[Path]:
    """The run folders `path` names: itself when it is a run, else the runs inside it (a study's runs).
    Refuses, in one line, a path that does not exist or holds no run."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"run folder {path} does not exist; pass the folder that `convscope train` printed")
    if not path.is_dir():
        raise RunError(f"{path} is a file, not a run folder; pass the folder that `convscope train` printed")
    if is_run(path):
        return [path]
    runs = runs_under(path)
    if not runs and study_kind(path) == "lr-study":
        raise RunError(f"{path} is an lr-study folder without run folders inside (written before lr-study saved "
                       "each schedule's run); run `convscope lr-study` again to get them")
    if not runs:
        raise RunError(f"{path / RUN_MARKER} is missing and no run folder is inside {path}: pass a run folder, "
                       "or an lr-study or bs-sweep folder")
    return runs
