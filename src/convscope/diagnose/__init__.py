"""Diagnosis: read a run's statistics and say what is wrong, where, since when, and what to change.

The rules read a saved run (or anything with the same attributes) and never the model, so they work on any
machine. A finding's type and findings.json live with the run folder (convscope.runs.findings).
"""

from convscope.diagnose.rules import RULES, diagnose
from convscope.runs.findings import SEVERITIES, Finding, load_findings, save_findings

__all__ = ["RULES", "SEVERITIES", "Finding", "diagnose", "load_findings", "save_findings"]
