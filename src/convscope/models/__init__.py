"""Models and model inspection: the book's `simple_cnn` and a per-layer `summary`."""

from convscope.models.cnn import MODELS, conv_block, create_model, simple_cnn
from convscope.models.summary import LayerRow, Summary, print_summary, summary

__all__ = [
    "MODELS",
    "LayerRow",
    "Summary",
    "conv_block",
    "create_model",
    "print_summary",
    "simple_cnn",
    "summary",
]
