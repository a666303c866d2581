"""A saved run as one self-contained page, report.html (its figures come from convscope.plots)."""

from convscope.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
