"""torch.compile with statistics on: no recompiles after warm-up, and the statistics of the eager model.

ActivationStats' forward hooks run inside the compiled forward. A hook traced by dynamo must read nothing
that changes from step to step: measured with torch 2.13, a hook that read the collector's row slot
recompiled until dynamo's recompile limit (8) within the first recorded steps; one run eagerly instead
(torch.compiler.disable) broke the graph at every hooked module, and on a torchvision-style ResNet the
modules' own forwards then recompiled per conv shape past that limit too. So a traced hook only keeps a
copy of the output, guarded by one flag that is the same for a whole step (stats/collector.py): the
model compiles into one graph for recorded steps and one for the others, with no graph break.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters, guard_failures

from convscope import TrainConfig
from convscope.data.batches import DeviceBatches
from convscope.experiments import run_training
from convscope.models.cnn import simple_cnn
from convscope.stats.activations import ActivationStats
from convscope.train import Callback, Learner

from ._callbacks import StopAt

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile needs a C++ compiler on the CPU (none on PATH)")

BS, STEPS, WARM_UP = 64, 56, 5  # warm-up: two recorded steps (0, 4) and the unrecorded ones between


class Compiles(Callback):
    """After each step: graphs made, frames compiled, and guard failures (each one a recompile) so far."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def after_batch(self) -> None:
        self.seen.append((counters["stats"]["unique_graphs"], counters["frames"]["total"],
                          sum(len(v) for v in guard_failures.values())))




def learner(mnist_tensors, compiled: bool, cbs=()) -> Learner:
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    model = simple_cnn()
    train = DeviceBatches(x[: BS * STEPS], y[: BS * STEPS], BS, shuffle=True, drop_last=True, seed=1)
    learn = Learner(model, train, cbs=[ActivationStats(every=4), *cbs])
    if compiled:
        learn.train_model = torch.compile(model)
    return learn


def test_a_compiled_fit_with_statistics_never_recompiles_after_warm_up(mnist_tensors, fresh_dynamo):
    seen = Compiles()
    compiled = learner(mnist_tensors, True, cbs=[seen])
    compiled.fit(1, 1e-3)
    assert len(seen.seen) == STEPS and STEPS - WARM_UP >= 50
    graphs, frames, failures = seen.seen[WARM_UP - 1]
    assert graphs > 0 and frames > 0  # the forward pass was compiled
    assert set(seen.seen[WARM_UP - 1:]) == {(graphs, frames, failures)}  # ...and nothing after the warm-up

    # The statistics of the compiled model are those of the eager one on the same weights and batch (step 0).
    eager = learner(mnist_tensors, False)
    eager.fit(1, 1e-3, cbs=[StopAt(1)])
    a, b = compiled.activation_stats.data, eager.activation_stats.data
    assert a.steps[0] == b.steps[0] == 0 and a.layers == b.layers
    for name in ("mean", "std", "near_zero", "dead", "grad_norm", "update_ratio"):
        np.testing.assert_allclose(getattr(a, name)[0], getattr(b, name)[0], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(a.hist[0], b.hist[0], atol=2e-3)  # a value on a bin edge may move over


def test_without_a_cpp_compiler_a_compile_run_trains_eagerly_with_a_warning(data_dir, tmp_path, monkeypatch,
                                                                          fresh_dynamo):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "no-such-c++"))  # what a machine without g++ has
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # a cached kernel would need no compiler
    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="r", bs=256, limit_train=1024, device="cpu",
                      compile=True)
    with pytest.warns(UserWarning, match=r"^torch.compile is not available here \(.*C\+\+ compiler.*\); training "
                                         r"without it$"):
        result = run_training(cfg, stats=False)
    assert result.learn.train_model is result.learn.model and result.learn.train_iter == 4


def test_the_statistics_hooks_never_drive_dynamo_to_its_recompile_limit(mnist_tensors, fresh_dynamo):
    """Hooks traced into the compiled graph once recompiled for each layer and each new row slot, until dynamo's
    limit made it give up."""
    seen = Compiles()
    learner(mnist_tensors, True, cbs=[seen, StopAt(3 * 4 + 1)]).fit(1, 1e-3)  # three recorded steps
    assert not any("recompile limit" in reason for reason in counters["unimplemented"])


def test_the_statistics_add_no_graph_break_to_a_compiled_model(mnist_tensors, fresh_dynamo):
    """Without statistics simple_cnn compiles into one graph; with them, into two (a recorded step and another)
    and never breaks: the compiled code is the model's own, fused as inductor fuses it without convscope."""
    learner(mnist_tensors, True, cbs=[StopAt(6)]).fit(1, 1e-3)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
