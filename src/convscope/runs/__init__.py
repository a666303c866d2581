"""Run directories: atomic writing while training, reading back afterwards."""

from .run import Run, load_run
from .saver import RunSaver
from .store import create_run_dir

__all__ = ["Run", "RunSaver", "create_run_dir", "load_run"]
