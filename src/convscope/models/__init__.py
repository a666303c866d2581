"""Models and model inspection: the book's `simple_cnn`, users' model factories (`--model`), a per-layer
`summary`, and the estimate of the memory training a model needs."""

from convscope.models.cnn import conv_block, simple_cnn
from convscope.models.factory import build_from_factory, load_factory
from convscope.models.memory import MemoryEstimate, available_memory, check_fits, estimate_training_memory
from convscope.models.summary import LayerRow, Summary, print_summary, summary

__all__ = [
    "LayerRow",
    "MemoryEstimate",
    "Summary",
    "available_memory",
    "build_from_factory",
    "check_fits",
    "conv_block",
    "estimate_training_memory",
    "load_factory",
    "print_summary",
    "simple_cnn",
    "summary",
]
