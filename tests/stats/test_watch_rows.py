"""watch() and ActivationStats record exactly the training steps, on user-style models and real MNIST.

Every number is checked against our own forward hooks and `torch.linalg.vector_norm` of the .grads at
step time (tests/stats/_user_models.py holds the models)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import convscope
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import read_npz
from convscope.stats import ActivationStats, has_hooks, watch
from convscope.train.callback import Callback
from convscope.train.learner import Learner

from ._user_models import BranchNet, ControlFlowNet, FunctionalNet, ResNetFrozenStem, SharedNet, TupleNet

BS, PER_EPOCH, EPOCHS = 32, 6, 2
EXACT = {"every": 1, "sample": None}  # every step, whole batches: what Reference computes


@pytest.fixture(scope="module")
def mnist_small(mnist_tensors):
    x, y, xt, yt = mnist_tensors
    n = BS * PER_EPOCH * EPOCHS * 3  # enough for accumulation's micro-batches
    return x[:n], y[:n], xt[:256], yt[:256]


class Reference:
    """Plain-PyTorch record of each step: every watched module's LAST training-mode output in the step
    (our own forward hooks) and each layer's gradient norm at step time."""

    def __init__(self, model: torch.nn.Module, layers: list[str]) -> None:
        self.named = [(n, model.get_submodule(n)) for n in layers]
        self.current: dict[str, torch.Tensor] = {}
        self.outputs: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, object]] = []
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in self.named]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                out = output[0] if isinstance(output, tuple) else output
                self.current[name] = out.detach().float().clone()
        return hook

    def close_step(self, divide: float = 1.0) -> None:
        self.outputs.append(self.current)
        self.current = {}
        norms: dict[str, object] = {}
        for name, m in self.named:
            params = list(m.parameters(recurse=False))
            if not params:
                continue
            if not any(p.requires_grad for p in params):
                norms[name] = "frozen"
                continue
            grads = [p.grad.flatten() for p in params if p.grad is not None]
            norms[name] = torch.linalg.vector_norm(torch.cat(grads)).item() / divide if grads else None
        self.grads.append(norms)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def check_rows(data: ActivationStatsData, ref: Reference, n_steps: int, every: int = 1) -> None:
    assert data.n_steps == math.ceil(n_steps / every)
    assert list(data.steps) == list(range(0, n_steps, every))
    for row, step in enumerate(data.steps):
        outputs, grads = ref.outputs[step], ref.grads[step]
        for j, name in enumerate(data.layers):
            if name in outputs:
                o = outputs[name]
                assert data.ran[row, j], (step, name)
                assert data.mean[row, j] == pytest.approx(o.mean().item(), rel=1e-4, abs=1e-5), (step, name)
                assert data.std[row, j] == pytest.approx(o.std().item(), rel=1e-4, abs=1e-5), (step, name)
                assert data.near_zero[row, j] == pytest.approx((o <= 0.05).float().mean().item(), abs=2e-5)
            else:  # did not run in this step: NaN, and the mask says so
                assert not data.ran[row, j], (step, name)
                assert np.isnan([data.mean[row, j], data.std[row, j], data.near_zero[row, j]]).all()
            g = grads.get(name, "no parameters")
            if g == "frozen":
                assert data.frozen[row, j] and np.isnan(data.grad_norm[row, j]) and np.isnan(data.update_ratio[row, j])
            elif g is None or g == "no parameters":
                assert np.isnan(data.grad_norm[row, j]) and not data.frozen[row, j], (step, name)
            else:
                assert not data.frozen[row, j]
                assert data.grad_norm[row, j] == pytest.approx(g, rel=1e-4), (step, name)


def hand_loop(model, w, ref, data, *, accum=1, autocast=None, scaler=None, order="after_update", branch=None,
              eval_inference_train_mode=False):
    """A user's loop: train, then evaluate under no_grad and w.log between epochs."""
    x, y, xt, yt = data
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    steps = 0
    for epoch in range(EPOCHS):
        model.train()
        for k in range(PER_EPOCH * accum):
            if branch is not None:
                model.use_wide = branch(steps)
            xb, yb = x[(epoch * PER_EPOCH * accum + k) * BS:][:BS], y[(epoch * PER_EPOCH * accum + k) * BS:][:BS]
            with torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext():
                loss = F.cross_entropy(model(xb), yb) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if (k + 1) % accum:
                continue
            if scaler is None:
                opt.step()
                ref.close_step()
                w.step(loss)
            elif order == "after_update":
                scaler.step(opt)
                scaler.update()
                ref.close_step()
                w.step(loss)
            elif order == "between":
                scaler.step(opt)
                ref.close_step()
                w.step(loss)
                scaler.update()
            elif order == "unscale_first":
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e3)
                ref.close_step()
                w.step(loss)
                scaler.step(opt)
                scaler.update()
            else:  # "before_step": .grad still carries the loss scale
                assert scaler.get_scale() > 1  # else the test could not tell scaled from unscaled
                ref.close_step(divide=scaler.get_scale())
                w.step(loss)
                scaler.step(opt)
                scaler.update()
            opt.zero_grad()
            steps += 1
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        if eval_inference_train_mode:  # a train-mode pass without autograd is no training step either
            model.train()
            with torch.inference_mode():
                model(xt[:64])
        w.log(epoch=epoch, accuracy=acc)
    return steps


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
    assert not has_hooks(model)
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
    assert not has_hooks(model)
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


class StepCapture(Callback):
    """The Learner's side of Reference: close each step after the backward pass, before the update."""

    def __init__(self, ref_factory) -> None:
        self.ref_factory, self.ref = ref_factory, None

    def before_fit(self) -> None:
        self.ref = self.ref_factory(self.learn.model)

    def after_backward(self) -> None:
        self.ref.close_step()

    def after_fit(self) -> None:
        self.ref.remove()


@pytest.mark.parametrize("kind", ["functional", "resnet_frozen_stem", "shared"])
def test_activation_stats_through_the_learner_on_a_dataloader(mnist_small, kind):
    x, y, xt, yt = mnist_small
    torch.manual_seed(0)
    model = MODELS[kind]()
    train = DataLoader(TensorDataset(x[: BS * PER_EPOCH], y[: BS * PER_EPOCH]), batch_size=BS, shuffle=True)
    valid = DataLoader(TensorDataset(xt, yt), batch_size=128)
    stats = ActivationStats(every=2, sample=None)
    layers = StatsLayers(model)
    capture = StepCapture(lambda m: Reference(m, layers))
    learn = Learner(model, train, valid, opt_func="sgd", lr=0.05, cbs=[stats, capture])
    learn.fit(EPOCHS)
    assert not has_hooks(model)
    data = learn.activation_stats.data
    check_rows(data, capture.ref, EPOCHS * PER_EPOCH, every=2)
    assert data.ran.all()


def StatsLayers(model) -> list[str]:  # noqa: N802 - reads as the list it returns
    from convscope.stats.hooks import select_modules

    return [name for name, _ in select_modules(model)]


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
        ref = Reference(model, w.collector.layers)
        for h in ref.handles:  # our reference hooks run eagerly too, so that they add no graphs of their own
            h.remove()
        ref.handles = [m.register_forward_hook(torch._dynamo.disable(ref._hook(n))) for n, m in ref.named]
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
    assert not has_hooks(model)
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
