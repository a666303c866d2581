"""Diagnosis: read a run's statistics and say what is wrong, where, since when, and what to change."""

from .findings import SEVERITIES, Finding
from .io import load_findings, save_findings
from .rules import RULES, diagnose

__all__ = ["RULES", "SEVERITIES", "Finding", "diagnose", "load_findings", "save_findings"]
