"""Models and model inspection: the book's `simple_cnn` and a per-layer `summary`."""

from convscope.models.cnn import conv_block, simple_cnn
from convscope.models.summary import LayerRow, Summary, print_summary, summary

__all__ = [
    "LayerRow",
    "Summary",
    "conv_block",
    "print_summary",
    "simple_cnn",
    "summary",
]
