"""Every user-style model through every kind of training loop: the statistics are exact wherever it runs.

Models (tests/stats/_user_models.py): functional activations, residual blocks after a frozen stem, a tuple
output, a module called twice, and a torchvision-style ResNet on real Fashion-MNIST at 3x32x32. Loops:
the Learner over a DataLoader, watch() in a hand-written loop with evaluation between epochs, bf16
autocast, fp16 with a GradScaler, and torch.compile. Each combination checks, against our own forward hooks
and the .grads at step time (tests/stats/_reference.py, all in float64):
  (a) one row per training step (every=1, sample=None; one combination per loop also every=2),
  (b) finite statistics wherever the layer ran (here: every layer, every step), NaN grad norms exactly
      where a layer has no trainable parameters,
  (c) no hook left on any module or parameter after training,
  (d) mean, std, near_zero and dead of every recorded step equal DESIGN.md's definitions on that step's
      output,
  (e) gradient norms equal torch.linalg.vector_norm of the layer's own unscaled .grads.
bf16 and fp16 run 20-30x slower than float32 on a CPU without those instructions: their loops are short.
Inductor compiles for seconds per graph: the default run compiles the tuple model with it, `-m slow` also
the residual one.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch._dynamo.utils import counters, guard_failures
from torch.utils.data import DataLoader, TensorDataset

from convscope.data.batches import normalize_images
from convscope.data.sources import load_dataset
from convscope.stats import ActivationStats, watch
from convscope.train.learner import Learner

from ._reference import EXACT, Reference, StepCapture, check_rows, hand_loop, hooks_left, stats_layers
from ._user_models import FunctionalNet, ResNetFrozenStem, SharedNet, TorchvisionResNet, TupleNet, fashion_rgb32

MODELS = {"functional": FunctionalNet, "resnet_frozen_stem": ResNetFrozenStem, "tuple": TupleNet,
          "shared": SharedNet, "torchvision_resnet": TorchvisionResNet}
N_TEST = 64  # images evaluated between epochs (and the Learner's validation set)
# Where w.step() comes in an fp16 loop (see hand_loop): each model takes another, so that all four are covered.
SCALER_ORDER = {"functional": "before_step", "resnet_frozen_stem": "unscale_first", "tuple": "between",
                "shared": "after_update", "torchvision_resnet": "before_step"}
WITH_EVERY_2 = [*((kind, 1) for kind in MODELS), ("functional", 2)]


def loop_size(kind: str, low_precision: bool = False) -> dict[str, int]:
    """Batch size, steps per epoch and epochs of a loop: 6 steps in float32, 4 in bf16 or fp16 (20-30x slower
    here); the torchvision-style ResNet, the costliest model, in batches of 8."""
    bs = 8 if kind == "torchvision_resnet" else 16 if low_precision else 32
    return {"bs": bs, "per_epoch": 2 if low_precision else 3, "epochs": 2}


def case_id(case: tuple[str, int]) -> str:
    kind, every = case
    return kind if every == 1 else f"{kind}-every-{every}"


@pytest.fixture(scope="module")
def images(mnist_tensors, real_data):
    """Per model kind: (x_train, y_train, x_test, y_test), enough for the longest loop here. MNIST for the
    small models; real Fashion-MNIST padded and repeated to 3x32x32 for the torchvision-style ResNet."""
    n = max(s["bs"] * s["per_epoch"] * s["epochs"] for kind in MODELS for s in (loop_size(kind),))
    x, y, xt, yt = mnist_tensors
    mnist = (x[:n], y[:n], xt[:N_TEST], yt[:N_TEST])
    fashion = load_dataset("fashion-mnist", root=real_data("fashion-mnist"))
    fx, mean, std = normalize_images(fashion.train_images[:n])
    fxt, _, _ = normalize_images(fashion.test_images[:N_TEST], mean, std)
    rgb = (fashion_rgb32(fx), fashion.train_labels[:n], fashion_rgb32(fxt), fashion.test_labels[:N_TEST])
    return {kind: rgb if kind == "torchvision_resnet" else mnist for kind in MODELS}


def check_run(data, ref: Reference, model: torch.nn.Module, n_steps: int, every: int = 1) -> None:
    """(a)-(e) for a run of the user models here, whose every watched layer runs in every step."""
    assert not hooks_left(model)
    check_rows(data, ref, n_steps, every)
    assert data.ran.all()
    if isinstance(model, ResNetFrozenStem):
        assert data.frozen[:, data.index("stem")].all() and not data.frozen[:, data.index("head")].any()


def ran_in(dtype: torch.dtype, ref: Reference) -> bool:
    """Whether autocast was on: some layer's outputs (stored as float32) are all values of `dtype`, which
    float32 outputs almost never are."""
    return any(o.abs().max() > 0 and torch.equal(o.to(dtype).float(), o) for o in ref.outputs[0].values())


def learner_run(kind: str, data, precision: str = "32", every: int = 1):
    x, y, xt, yt = data
    size = loop_size(kind, low_precision=precision != "32")
    bs, per_epoch, epochs = size["bs"], size["per_epoch"], size["epochs"]
    torch.manual_seed(0)
    model = MODELS[kind]()
    train = DataLoader(TensorDataset(x[: bs * per_epoch], y[: bs * per_epoch]), batch_size=bs, shuffle=True)
    valid = DataLoader(TensorDataset(xt, yt), batch_size=32)
    capture = StepCapture(lambda m: Reference(m, stats_layers(m)))
    learn = Learner(model, train, valid, opt_func="sgd", lr=0.05, precision=precision,
                    cbs=[ActivationStats(every=every, sample=None), capture])
    learn.fit(epochs)
    assert learn.train_iter == per_epoch * epochs
    return learn, capture.ref


# ----------------------------------------------------------------- 1. the Learner over a DataLoader
@pytest.mark.parametrize("case", WITH_EVERY_2, ids=case_id)
def test_the_learner_on_a_dataloader_records_exactly_each_training_step(images, case):
    kind, every = case
    learn, ref = learner_run(kind, images[kind], every=every)
    check_run(learn.activation_stats.data, ref, learn.model, learn.train_iter, every)


# ----------------------------------------------------------------- 2. watch() in a hand-written loop
@pytest.mark.parametrize("case", WITH_EVERY_2, ids=case_id)
def test_watch_in_a_hand_loop_with_evaluation_records_exactly_each_training_step(images, case):
    kind, every = case
    size = loop_size(kind)
    torch.manual_seed(0)
    model = MODELS[kind]()
    with watch(model, every=every, sample=None) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, images[kind], **size)
        ref.remove()
    assert steps == size["per_epoch"] * size["epochs"]
    assert [m["epoch"] for m in w.metrics] == list(range(size["epochs"]))  # evaluated and logged each epoch
    check_run(w.data, ref, model, steps, every)


# ----------------------------------------------------------------- 3. bf16 autocast
@pytest.mark.parametrize("kind", list(MODELS))
def test_bf16_autocast_in_a_hand_loop_records_exactly_each_training_step(images, kind):
    torch.manual_seed(0)
    model = MODELS[kind]()
    with watch(model, **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, images[kind], autocast=torch.bfloat16,
                          **loop_size(kind, low_precision=True))
        ref.remove()
    assert ran_in(torch.bfloat16, ref)
    check_run(w.data, ref, model, steps)


def test_the_learner_at_bf16_records_exactly_each_training_step(images):
    learn, ref = learner_run("resnet_frozen_stem", images["resnet_frozen_stem"], precision="bf16")
    assert ran_in(torch.bfloat16, ref)
    check_run(learn.activation_stats.data, ref, learn.model, learn.train_iter)


# ----------------------------------------------------------------- 4. fp16 with a GradScaler
@pytest.mark.parametrize("kind", list(MODELS))
def test_fp16_with_a_grad_scaler_records_the_norms_of_the_unscaled_gradients(images, kind):
    torch.manual_seed(0)
    model = MODELS[kind]()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with watch(model, scaler=scaler, **EXACT) as w:
        ref = Reference(model, w.collector.layers)
        steps = hand_loop(model, w, ref, images[kind], autocast=torch.float16, scaler=scaler,
                          order=SCALER_ORDER[kind], **loop_size(kind, low_precision=True))
        ref.remove()
    assert ran_in(torch.float16, ref)
    assert scaler.get_scale() > 1  # a scale the norms would show if it were left in
    check_run(w.data, ref, model, steps)


def test_the_learner_at_fp16_records_the_norms_of_the_unscaled_gradients(images):
    learn, ref = learner_run("shared", images["shared"], precision="fp16")
    assert ran_in(torch.float16, ref)
    assert learn.scaler.get_scale() > 1
    check_run(learn.activation_stats.data, ref, learn.model, learn.train_iter)


# ----------------------------------------------------------------- 5. torch.compile
class RecompileLimitHit(AssertionError):
    """Dynamo gave up compiling a frame after recompile_limit recompiles (the rest of it runs eagerly)."""


def compiled_run(kind: str, data, backend: str):
    """A hand loop whose training passes call torch.compile(model); evaluation calls the eager model. Returns
    the run and, before each training forward pass and after the last, (graphs made, recompiles) so far."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    compiled = torch.compile(model, backend=backend)
    seen: list[tuple[int, int]] = []

    def compiles() -> tuple[int, int]:
        return counters["stats"]["unique_graphs"], sum(len(v) for v in guard_failures.values())

    def forward(xb: torch.Tensor) -> torch.Tensor:
        seen.append(compiles())
        return compiled(xb)

    with watch(model, **EXACT) as w:
        ref = Reference(model, w.collector.layers)  # traced into the graph with convscope's hooks: no breaks
        steps = hand_loop(model, w, ref, data, forward=forward, **loop_size(kind))
        ref.remove()
    seen.append(compiles())
    return w, ref, model, steps, seen


def check_compiled_run(w, ref: Reference, model: torch.nn.Module, steps: int, seen: list[tuple[int, int]]) -> None:
    """(a)-(e), and: the first step compiles the forward graphs; no step after it adds a graph or a recompile;
    dynamo never reached its recompile limit (checked last, and raised as its own failure)."""
    assert seen[0] == (0, 0) and seen[1][0] > 0, seen  # dynamo compiled the model, in the first step
    assert set(seen[1:]) == {seen[1]}, seen
    check_run(w.data, ref, model, steps)
    limits = [reason.splitlines()[0] for reason in counters["unimplemented"] if "recompile limit" in reason]
    if limits:
        raise RecompileLimitHit(f"{limits[0]}; {seen[-1][1]} recompiles in the first step, {seen[-1][0]} graphs")


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_model_compiled_with_the_eager_backend_records_each_step_without_recompiling(images, kind, fresh_dynamo):
    check_compiled_run(*compiled_run(kind, images[kind], "eager"))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor needs a C++ compiler on the CPU (none on PATH)")
@pytest.mark.parametrize("kind", ["tuple", pytest.param("resnet_frozen_stem", marks=pytest.mark.slow)])
def test_a_model_compiled_with_inductor_records_each_step_without_recompiling(images, kind, fresh_dynamo):
    check_compiled_run(*compiled_run(kind, images[kind], "inductor"))
