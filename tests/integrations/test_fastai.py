"""convscope.integrations.fastai.Scope in fastai's own Learner.fit_one_cycle on real MNIST.

fastai needs torchvision, whose PyPI build does not import beside the CPU torch the main test run uses, so
these tests run in a second environment (.ci/run makes it) and are deselected elsewhere (marker `fastai`).
Every recorded number is checked against a plain fastai callback that reads the same moments itself: our
own forward hooks for the layer outputs, `torch.linalg.vector_norm` of the .grads before the step, and
fastai's Recorder for the learning rates and metrics."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import convscope
from convscope.models.cnn import simple_cnn
from convscope.stats import has_hooks
from convscope.stats.hooks import select_modules

from ._reference import StepRecord, check_rows

pytestmark = pytest.mark.fastai



def import_fastai():
    """fastai's modules, imported when a test runs (not when pytest collects this file: the main test run,
    which deselects these tests, has no fastai). In CI a missing fastai fails instead of skipping."""
    if os.environ.get("CI", "").strip().lower() not in ("true", "1"):
        pytest.importorskip("fastai")
    from fastai.callback.core import Callback
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 - adds Learner.fit_one_cycle
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy

    from convscope.integrations.fastai import Scope

    return SimpleNamespace(Callback=Callback, DataLoaders=DataLoaders, Learner=Learner, accuracy=accuracy,
                           Scope=Scope)


BS, N_TRAIN, EPOCHS = 64, 512, 2
STEPS = N_TRAIN // BS * EPOCHS


def reference(fa):  # a fastai Callback, made once fastai is imported
    class Reference(fa.Callback):
        """What Scope should record, read independently (_reference.py)."""

        order = 0

        def __init__(self) -> None:
            self.record = StepRecord()

        def before_fit(self):
            self.record.attach(self.learn.model, [name for name, _ in select_modules(self.learn.model)])

        def before_step(self):
            self.record.end_step(self.learn.model)

        def after_fit(self):
            self.record.detach()

    return Reference()


@pytest.fixture(scope="module")
def fa():
    return import_fastai()


@pytest.fixture(scope="module")
def dls(fa, mnist_tensors):
    x, y, xt, yt = mnist_tensors
    return fa.DataLoaders.from_dsets(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(xt[:512], yt[:512]),
                                  bs=BS, device="cpu")


@pytest.fixture(scope="module")
def fitted(fa, dls, tmp_path_factory):
    """One fit_one_cycle run for all tests here: (learner, reference, run folder)."""
    run_dir = tmp_path_factory.mktemp("fastai") / "run"
    learn, ref = fit(fa, dls, run_dir)
    return learn, ref, run_dir


def fit(fa, dls, run_dir):
    torch.manual_seed(0)
    ref = reference(fa)
    learn = fa.Learner(dls, simple_cnn(), loss_func=torch.nn.functional.cross_entropy, metrics=fa.accuracy,
                       cbs=[ref, fa.Scope(run_dir, every=1, sample=None)])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(EPOCHS, 0.01)
    return learn, ref


def test_a_second_fit_with_the_same_scope_is_refused(fa, dls, tmp_path):
    learn = fa.Learner(dls, simple_cnn(), loss_func=torch.nn.functional.cross_entropy, cbs=fa.Scope(tmp_path / "run"))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
        with pytest.raises(RuntimeError, match="new Scope"):
            learn.fit(1)
    assert not has_hooks(learn.model)


def test_fit_one_cycle_writes_a_run_that_matches_what_fastai_and_plain_pytorch_see(fitted):
    learn, ref, run_dir = fitted
    assert not has_hooks(learn.model)
    run = convscope.load_run(run_dir)
    data = run.activation_stats
    check_rows(data, ref.record, STEPS)
    assert data.layers == learn.scope.data.layers
    # the schedule as fastai's own Recorder logged it: 1cycle's warm-up from lr/25, peak, anneal
    np.testing.assert_allclose(run.steps["lr"], np.asarray(learn.recorder.hps["lr"]), rtol=1e-6)
    np.testing.assert_allclose(run.steps["mom"], np.asarray(learn.recorder.hps["mom"]), rtol=1e-6)
    assert run.steps["lr"].argmax() not in (0, STEPS - 1)
    assert list(run.steps["epoch"]) == sorted(list(range(EPOCHS)) * (STEPS // EPOCHS))
    assert [m["epoch"] for m in run.metrics] == list(range(EPOCHS))
    train_loss, valid_loss, acc = learn.recorder.values[-1]
    assert run.metrics[-1]["accuracy"] == pytest.approx(acc)
    assert run.metrics[-1]["valid_loss"] == pytest.approx(valid_loss)
    # it trained: 16 steps from chance (0.1). fastai shuffles with its own generator, seeded from Python's
    # `random` when the loaders are made, so the order differs between runs: 0.43-0.64 over 9 runs.
    assert acc > 0.3
    assert run.config["source"] == "fastai"


def test_report_and_diagnose_accept_a_fastai_run(fitted):
    from typer.testing import CliRunner

    from convscope.cli.app import app

    run_dir = fitted[2]
    runner = CliRunner()
    diagnosed = runner.invoke(app, ["diagnose", str(run_dir)])
    assert diagnosed.exit_code == 0, diagnosed.output
    assert isinstance(json.loads((run_dir / "findings.json").read_text()), list)
    reported = runner.invoke(app, ["report", str(run_dir)])
    assert reported.exit_code == 0, reported.output
    page = (run_dir / "report.html").read_text()
    assert "conv1" in page and "accuracy" in page
