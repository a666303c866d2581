"""The run folder on disk, and nothing about training: atomic writes and checked reads (store), checkpoint
files (checkpoint), the statistics file (stats_data), the diagnosis file (findings), the gradient noise
scale file (noise_scale), and `load_run`, which opens a finished or interrupted run in any process.

The training side that fills a run folder is `convscope.train.run_saver.RunSaver`.
"""

from convscope.runs.findings import Finding, load_findings, save_findings
from convscope.runs.run import Run, load_run
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import create_run_dir

__all__ = ["ActivationStatsData", "Finding", "Run", "create_run_dir", "load_findings", "load_run", "save_findings"]
