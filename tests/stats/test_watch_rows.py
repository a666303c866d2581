"""watch() and ActivationStats record exactly the training steps, on user-style models and real MNIST.

Every number is checked against our own forward hooks and `torch.linalg.vector_norm` of the .grads at
step time (tests/stats/_reference.py computes them; tests/stats/_user_models.py holds the models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import convscope
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import read_npz
from convscope.stats import ActivationStats, watch
from convscope.train.learner import Learner

from ._reference import (
    BS,
    EPOCHS,
    EXACT,
    PER_EPOCH,
    Reference,
    StepCapture,
    check_rows,
    hand_loop,
    hooks_left,
    stats_layers,
)
from ._user_models import BranchNet, ControlFlowNet, FunctionalNet, ResNetFrozenStem, SharedNet, TupleNet


@pytest.fixture(scope="module")
def mnist_small(mnist_tensors):
    x, y, xt, yt = mnist_tensors
    n = BS * PER_EPOCH * EPOCHS * 3  # enough for accumulation's micro-batches
    return x[:n], y[:n], xt[:256], yt[:256]


MODELS = {"functional": FunctionalNet, "resnet_frozen_stem": ResNetFrozenStem, "tuple": TupleNet,
          "shared": SharedNet, "branch": BranchNet}


def every_other(step: int) -> bool:
    return step % 3 == 1


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("kind", list(MODELS))
def test_watch_records_exactly_the_training_steps(mnist_small, tmp_path, kind, every):
    torch.manual_seed(0)
    model = MODELS[kind]()
    with watch(model, run_dir=tmp_path / "run", every=every, sample=None) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, mnist_small, branch=every_other if kind == "branch" else None,
                          eval_inference_train_mode=True)
        ref.remove()
    assert steps == EPOCHS * PER_EPOCH
    assert not hooks_left(model)
    check_rows(w.data, ref, steps, every)
    saved = convscope.load_run(tmp_path / "run").activation_stats
    np.testing.assert_array_equal(saved.ran, w.data.ran)
    np.testing.assert_array_equal(saved.mean, w.data.mean)
    np.testing.assert_array_equal(saved.frozen, w.data.frozen)
    if kind == "resnet_frozen_stem":
        assert saved.frozen[:, saved.index("stem")].all() and saved.ran[:, saved.index("stem")].all()
        assert np.isfinite(saved.mean[:, saved.index("stem")]).all()
    if kind == "branch":
        wide = saved.index("paths.wide")
        assert saved.ran[:, wide].any() and not saved.ran[:, wide].all()  # a real mix: the test can fail
    if kind != "branch":
        assert saved.ran.all() and np.isfinite(saved.mean).all()


def test_bf16_autocast(mnist_small):
    torch.manual_seed(0)
    model = FunctionalNet()
    with watch(model, **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, mnist_small, autocast=torch.bfloat16)
        ref.remove()
    assert not hooks_left(model)
    check_rows(w.data, ref, steps)


@pytest.mark.parametrize("kind", ["resnet_frozen_stem", "branch"])
def test_gradient_accumulation(mnist_small, kind):
    """Three micro-batches per w.step(): the last micro-batch's activations, the accumulated gradient."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    with watch(model, **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, mnist_small, accum=3, branch=every_other if kind == "branch" else None)
        ref.remove()
    assert steps == EPOCHS * PER_EPOCH
    check_rows(w.data, ref, steps)


@pytest.mark.parametrize("order", ["after_update", "between", "unscale_first", "before_step"])
def test_grad_scaler_norms_are_of_the_unscaled_gradients(mnist_small, order):
    torch.manual_seed(0)
    model = FunctionalNet()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with watch(model, scaler=scaler, **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, mnist_small, autocast=torch.float16, scaler=scaler, order=order)
        ref.remove()
    check_rows(w.data, ref, steps)
    assert w.data.grad_norm[:, 0].max() < 2.0**6, "no loss scale left in the norms"


def test_unseen_lists_functional_activations_and_layers_that_never_ran(mnist_small, tmp_path):
    torch.manual_seed(0)
    data = {}
    for kind, model in [("functional", FunctionalNet()), ("branch", BranchNet()), ("control", ControlFlowNet())]:
        with watch(model, run_dir=tmp_path / kind, **EXACT) as w:
            ref = Reference(model, w.collector.layers)
            hand_loop(model, w, ref, mnist_small)  # BranchNet never takes 'wide' here
            ref.remove()
        data[kind] = convscope.load_run(tmp_path / kind).activation_stats
    functional = data["functional"].unseen
    assert sorted(name for name, _ in functional) == ["c1", "c2", "fc1"]
    assert all("relu" in reason and "not recorded" in reason for _, reason in functional)
    assert data["branch"].never_ran == ["paths.wide"]
    assert ("paths.wide", "never ran in a recorded training step") in data["branch"].unseen
    assert not data["branch"].ran[:, data["branch"].index("paths.wide")].any()
    assert len(data["control"].unseen) == 1 and data["control"].unseen[0][0] == "*"
    assert data["control"].unseen[0][1].startswith("unknown")


def test_an_old_stats_file_without_masks_loads(mnist_small, tmp_path):
    torch.manual_seed(0)
    model = BranchNet()
    with watch(model, **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        hand_loop(model, w, ref, mnist_small, branch=every_other)
        ref.remove()
    w.data.save(tmp_path / "new.npz")
    arrays = read_npz(tmp_path / "new.npz")
    old = {k: v for k, v in arrays.items() if k not in ("ran", "frozen", "unseen")}
    np.savez(tmp_path / "old.npz", **old)
    loaded = ActivationStatsData.load(tmp_path / "old.npz")
    np.testing.assert_array_equal(loaded.ran, np.isfinite(arrays["mean"]))
    np.testing.assert_array_equal(loaded.ran, arrays["ran"])  # here the two agree: NaN exactly where not run
    assert not loaded.frozen.any() and loaded.unseen == []


@pytest.mark.parametrize("kind", ["functional", "resnet_frozen_stem", "shared"])
def test_activation_stats_through_the_learner_on_a_dataloader(mnist_small, kind):
    x, y, xt, yt = mnist_small
    torch.manual_seed(0)
    model = MODELS[kind]()
    train = DataLoader(TensorDataset(x[: BS * PER_EPOCH], y[: BS * PER_EPOCH]), batch_size=BS, shuffle=True)
    valid = DataLoader(TensorDataset(xt, yt), batch_size=128)
    stats = ActivationStats(every=2, sample=None)
    layers = stats_layers(model)
    capture = StepCapture(lambda m: Reference(m, layers))
    learn = Learner(model, train, valid, opt_func="sgd", lr=0.05, cbs=[stats, capture])
    learn.fit(EPOCHS)
    assert not hooks_left(model)
    data = learn.activation_stats.data
    check_rows(data, capture.ref, EPOCHS * PER_EPOCH, every=2)
    assert data.ran.all()


def test_a_compiled_model_records_every_step_without_recompiling(mnist_small):
    """torch.compile around a watched model (the eager backend: dynamo's tracing and guards, no codegen)."""
    import torch._dynamo

    x, y, _, _ = mnist_small
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 26 * 26, 10))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    graphs = {}
    with watch(model, **EXACT) as w:
        # Our reference hooks run eagerly too, so that they add no graphs of their own.
        ref = Reference(model, w.collector.layers, outside_dynamo=True)
        for step in range(60):
            xb, yb = x[step % 30 * BS:][:BS], y[step % 30 * BS:][:BS]  # full batches: one shape
            loss = F.cross_entropy(compiled(xb), yb)
            loss.backward()
            opt.step()
            ref.close_step()
            w.step(loss)
            opt.zero_grad()
            graphs[step] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        ref.remove()
    assert graphs[0] > 0, "dynamo compiled the model"
    assert graphs[59] == graphs[1], f"graphs made after the first step: {graphs}"
    assert not hooks_left(model)
    check_rows(w.data, ref, 60)


def test_the_diagnosis_and_the_report_say_what_was_not_seen(mnist_small, tmp_path):
    from convscope.diagnose import diagnose, save_findings
    from convscope.report import write_report

    torch.manual_seed(0)
    model = FunctionalNet()  # F.relu after c1, c2 and fc1: three post-activation outputs no hook can see
    with watch(model, run_dir=tmp_path / "run", **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        hand_loop(model, w, ref, mnist_small)
        ref.remove()
    findings = diagnose(convscope.load_run(tmp_path / "run"))
    seen = [f for f in findings if f.rule == "not_seen"]
    assert len(seen) == 1 and seen[0].severity == "info"
    assert sorted(seen[0].layers) == ["c1", "c2", "fc1"] and "relu" in seen[0].evidence
    save_findings(tmp_path / "run", findings)  # what `convscope diagnose RUN` writes, and the report shows
    page = write_report(tmp_path / "run").read_text()
    assert "not_seen" in page and "nn.ReLU() instead of F.relu" in page


def test_a_model_of_modules_has_nothing_unseen(mnist_small, tmp_path):
    from convscope.diagnose import diagnose
    from convscope.models.cnn import simple_cnn

    torch.manual_seed(0)
    model = simple_cnn()
    with watch(model, run_dir=tmp_path / "run", **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        hand_loop(model, w, ref, mnist_small)
        ref.remove()
    assert not any(f.rule == "not_seen" for f in diagnose(convscope.load_run(tmp_path / "run")))


def test_a_loop_that_trains_in_eval_mode_is_told_once(mnist_small):
    """A step that should be recorded but ran no training-mode forward pass (model.eval() never undone)."""
    x, y, _, _ = mnist_small
    torch.manual_seed(0)
    model = FunctionalNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, **EXACT) as w:
        with pytest.warns(RuntimeWarning) as caught:
            for step in range(6):
                if step == 2:
                    model.eval()  # an evaluation that forgot model.train() afterwards
                F.cross_entropy(model(x[step * BS:(step + 1) * BS]), y[step * BS:(step + 1) * BS]).backward()
                opt.step()
                w.step()
                opt.zero_grad()
    assert len(caught) == 1 and str(caught[0].message).startswith(
        "watch(): step 2 ran no training-mode forward pass of a watched module, so nothing was recorded")
    assert list(w.data.steps) == [0, 1]
