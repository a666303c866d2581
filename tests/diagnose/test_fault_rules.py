"""The rules the fault benchmark showed missing, on statistics with a known answer: values computed here with
plain numpy (sigmoid of normal samples, the cross-entropy of a uniform guess, the weight decay's product),
and one real MNIST run per rule where a run can show it in a few seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from convscope.diagnose import rules as R
from convscope.diagnose.live import RunSoFar
from convscope.runs.stats_data import ActivationStatsData


def stats_from(values: dict[str, np.ndarray], kinds: list[str], frozen: np.ndarray | None = None,
               update: np.ndarray | None = None) -> ActivationStatsData:
    """ActivationStatsData from raw activations [rows, samples] per layer: mean, std and near-zero share
    computed here with numpy, as the definitions in runs/stats_data.py say."""
    names = list(values)
    rows = len(next(iter(values.values())))
    col = lambda fn: np.stack([[fn(values[n][r]) for n in names] for r in range(rows)])  # noqa: E731
    shape = (rows, len(names))
    return ActivationStatsData(
        layers=names, steps=np.arange(rows, dtype=np.int64) * 2, mean=col(np.mean), std=col(np.std),
        near_zero=col(lambda v: np.mean(v <= 0.05)), dead=np.zeros(shape), hist=np.zeros((*shape, 0)),
        hist_range=np.zeros((len(names), 2)), grad_norm=np.full(shape, 0.1),
        update_ratio=np.full(shape, 1e-2) if update is None else update, kinds=kinds, frozen=frozen)


@dataclass
class FakeRun:
    steps: dict[str, np.ndarray]
    stats: ActivationStatsData | None = None
    config: dict = field(default_factory=lambda: {"wd": 0.01, "bn": True})
    metrics: list = field(default_factory=list)
    path: None = None

    @property
    def has_stats(self) -> bool:
        return self.stats is not None

    @property
    def activation_stats(self) -> ActivationStatsData:
        return self.stats


def loss_steps(loss: np.ndarray, lr: float = 0.01) -> dict[str, np.ndarray]:
    return {"step": np.arange(len(loss)), "loss": loss.astype(np.float32), "lr": np.full(len(loss), lr)}


rng = np.random.default_rng(0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_saturated_sigmoid_is_found_and_one_in_its_linear_range_is_not():
    # Pre-activations with std 8: most sigmoid outputs at 0 or 1; std 0.5: all in the near-linear middle.
    wide = sigmoid(rng.normal(0, 8, size=(8, 4000)))
    narrow = sigmoid(rng.normal(0, 0.5, size=(8, 4000)))
    # The saturation index, computed independently: var / (m (1 - m)) over the last quarter of the rows.
    m, v = wide[-2:].mean(), wide[-2:].var()
    assert v / (m * (1 - m)) > R.SATURATION_HIGH
    found = R.saturated_activations(FakeRun({}, stats_from({"c1": wide * 0 + narrow, "a1": wide},
                                                         ["Conv2d", "Sigmoid"])))
    assert [(f.rule, f.layer) for f in found] == [("saturated_activations", "a1")]
    assert R.saturated_activations(FakeRun({}, stats_from({"a1": narrow}, ["Sigmoid"]))) == []
    # The same wide values in a ReLU layer are not a saturating kind: nothing to say.
    assert R.saturated_activations(FakeRun({}, stats_from({"a1": wide}, ["ReLU"]))) == []


def test_frozen_from_step_0_is_found_frozen_part_way_is_not():
    v = {"c1": rng.normal(size=(8, 100)), "c2": rng.normal(size=(8, 100)), "c3": rng.normal(size=(8, 100))}
    kinds = ["Conv2d", "Conv2d", "Linear"]
    frozen = np.zeros((8, 3), dtype=bool)
    frozen[:, 1] = True  # c2 frozen from the start
    found = R.frozen_parameters(FakeRun({}, stats_from(v, kinds, frozen=frozen)))
    assert [(f.rule, f.severity, f.layers) for f in found] == [("frozen_parameters", "medium", ("c2",))]
    part_way = np.zeros((8, 3), dtype=bool)
    part_way[3:, 0] = True  # the fast recipe's conv1: frozen after 30% of the steps
    assert R.frozen_parameters(FakeRun({}, stats_from(v, kinds, frozen=part_way))) == []
    # Two of three frozen (>= half the weight layers): high.
    frozen[:, 0] = True
    assert R.frozen_parameters(FakeRun({}, stats_from(v, kinds, frozen=frozen)))[0].severity == "high"


def uniform_guess_loss(n: int, classes: int = 10) -> np.ndarray:
    """The cross-entropy of logits that carry no information, computed from its definition."""
    logits = rng.normal(0, 0.05, size=(n, 64, classes))
    labels = rng.integers(0, classes, size=(n, 64))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1).squeeze(-1).mean(-1)


def test_no_signal_when_the_loss_stays_at_ln_n_classes():
    loss = uniform_guess_loss(200)
    assert abs(loss.mean() - np.log(10)) < 0.01  # the independent check: ln 10 = 2.303
    v = {"c1": rng.normal(size=(8, 100))}
    run = FakeRun(loss_steps(loss), stats_from(v, ["Conv2d"]))
    assert [f.rule for f in R.no_signal(run)] == ["no_signal"]
    learning = FakeRun(loss_steps(np.linspace(2.3, 0.2, 200)), stats_from(v, ["Conv2d"]))
    assert R.no_signal(learning) == []
    # Weights that hardly move: the lr's finding (update_ratio_low), not the labels'.
    still = FakeRun(loss_steps(loss), stats_from(v, ["Conv2d"], update=np.full((8, 1), 1e-7)))
    assert R.no_signal(still) == []


def test_no_signal_waits_for_a_tenth_of_the_run_while_training():
    loss = uniform_guess_loss(40)
    v = {"c1": rng.normal(size=(8, 100))}
    so_far = RunSoFar({}, [], loss_steps(loss), stats_from(v, ["Conv2d"]), progress=0.05)
    assert R.no_signal(so_far) == []
    so_far.progress = 0.2
    assert [f.rule for f in R.no_signal(so_far)] == ["no_signal"]


def test_a_model_ending_in_softmax_is_found():
    v = {"c1": rng.normal(size=(8, 100)), "softmax": rng.uniform(size=(8, 100))}
    found = R.bounded_outputs(FakeRun({}, stats_from(v, ["Conv2d", "Softmax"])))
    assert [(f.rule, f.layer) for f in found] == [("loss_floor", "softmax")]
    # ln(1 + 9 / e): the least cross-entropy of probabilities used as logits, 10 classes
    p = np.full(10, 0.0)
    p[0] = 1.0
    floor = -np.log(np.exp(p[0]) / np.exp(p).sum())
    assert f"{floor:.3g}" in found[0].evidence
    assert R.bounded_outputs(FakeRun({}, stats_from({"c1": v["c1"]}, ["Conv2d"]))) == []


def test_weight_decay_that_alone_shrinks_the_weights_to_under_one_percent():
    lr = np.full(117, 0.06)
    # exp(-sum(lr * wd)): what decoupled decay leaves of a weight the gradient never touches
    for wd, expected in ((10.0, True), (0.01, False)):
        left = np.prod(1 - lr * wd) if wd * 0.06 < 1 else 0.0
        run = FakeRun({"step": np.arange(117), "loss": np.ones(117), "lr": lr}, config={"wd": wd})
        found = R.weight_decay_high(run)
        assert bool(found) is expected and bool(left < 0.01) is expected
        if found:
            assert found[0].change == {"wd": 0.01}


def test_still_learning_and_oscillating_at_the_end_only():
    falling = np.exp(-np.linspace(0, 3, 100)) + 0.01  # last 10% about 26% below the 10% before
    k = 10
    assert falling[-k:].mean() <= (1 - R.STILL_FALLING) * falling[-2 * k:-k].mean()
    assert [f.rule for f in R.loss_trend(FakeRun(loss_steps(falling)))] == ["still_learning"]
    flat = np.full(100, 0.05)
    assert R.loss_trend(FakeRun(loss_steps(flat))) == []
    swinging = np.where(np.arange(100) % 10 == 0, 5.0, 0.05)  # a spike to 5 every 10th step
    assert swinging[-10:].std() / swinging[-10:].mean() >= R.OSCILLATING_CV
    assert [f.rule for f in R.loss_trend(FakeRun(loss_steps(swinging)))] == ["loss_oscillating"]
    assert R.loss_trend(RunSoFar({}, [], loss_steps(falling), None, progress=0.9)) == []


def test_training_loss_far_above_validation_and_near_chance():
    loss = np.full(100, 1.5)
    gap = FakeRun(loss_steps(loss), metrics=[{"valid_loss": 0.3, "accuracy": 0.9}])
    assert [f.rule for f in R.train_valid_gap(gap)] == ["train_loss_above_valid"]
    assert R.train_valid_gap(FakeRun(loss_steps(loss), metrics=[{"valid_loss": 1.4, "accuracy": 0.5}])) == []
    chance = FakeRun(loss_steps(loss), metrics=[{"valid_loss": 2.3, "accuracy": 0.11}])
    assert [f.rule for f in R.near_chance(chance)] == ["near_chance"]
    assert R.near_chance(FakeRun(loss_steps(loss), metrics=[{"accuracy": 0.5}])) == []


def test_a_run_near_chance_is_never_called_healthy():
    run = FakeRun(loss_steps(np.linspace(2.3, 2.0, 100)), metrics=[{"valid_loss": 2.2, "accuracy": 0.12}])
    findings = R.diagnose(run)
    assert "healthy" not in [f.rule for f in findings]
    assert "near_chance" in [f.rule for f in findings]


@pytest.mark.parametrize("rule", [R.loss_trend, R.train_valid_gap, R.near_chance, R.overfitting])
def test_whole_run_rules_say_nothing_while_training(rule):
    run = RunSoFar({}, [{"valid_loss": 0.1, "train_loss": 3.0, "accuracy": 0.1}] * 3,
                   loss_steps(np.abs(rng.normal(1.0, 1.0, 100))), None, progress=0.5)
    assert rule(run) == []


def step0_stats(model, x) -> ActivationStatsData:
    """The conv and linear outputs of `model` on one real batch, as the row of step 0 (before any update),
    with the share below zero beside the near-zero share."""
    import torch

    outs: dict[str, np.ndarray] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().double().numpy()))
             for n, m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    values = {n: outs[n].reshape(1, -1) for n, _ in layers}
    stats = stats_from(values, [type(m).__name__ for _, m in layers])
    stats.negative = np.array([[np.mean(values[n] < 0) for n, _ in layers]])
    return stats


@pytest.fixture(scope="module")
def batch(mnist_tensors):
    return mnist_tensors[0][:256]


def no_bn_cnn(seed: int = 0):
    import torch

    from convscope.models.cnn import simple_cnn

    torch.manual_seed(seed)
    return simple_cnn(bn=False)


def test_dead_at_init_finds_zero_weights_and_negative_biases_not_small_outputs(batch):
    import torch

    healthy = no_bn_cnn()
    assert R.dead_at_init(FakeRun({}, step0_stats(healthy, batch))) == []  # its small logits are not "dead"
    zero, negative, one = no_bn_cnn(), no_bn_cnn(), no_bn_cnn()
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
        for m in negative.modules():
            if isinstance(m, torch.nn.Conv2d) and m is not negative.conv5.conv:
                m.bias.fill_(-5.0)
        one.conv2.conv.bias.fill_(-5.0)
    found = R.dead_at_init(FakeRun({}, step0_stats(zero, batch)))
    assert [(f.rule, f.layer, f.change) for f in found] == [("dead_at_init", "conv1.conv", {"init": "default"})]
    assert R.dead_at_init(FakeRun({}, step0_stats(negative, batch)))[0].layer == "conv1.conv"
    assert R.dead_at_init(FakeRun({}, step0_stats(one, batch)))[0].layer == "conv2.conv"  # the layer, localised


def test_init_scale_finds_weights_ten_times_too_large_not_unnormalised_inputs(batch):
    import torch

    assert R.init_scale(FakeRun({}, step0_stats(no_bn_cnn(), batch))) == []
    big = no_bn_cnn()
    with torch.no_grad():
        for m in big.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(10)
    found = R.init_scale(FakeRun({}, step0_stats(big, batch)))
    assert [(f.rule, f.change) for f in found] == [("init_scale", {"init": "default"})]
    # 0-255 pixels: the first layer's output is huge, but the layers after it shrink it as default init does;
    # that is input_scale's finding (the input), not the init's.
    raw = (batch * 0.3081 + 0.1307) * 255
    stats = step0_stats(no_bn_cnn(), raw)
    assert R.init_scale(FakeRun({}, stats)) == []
    found = R.input_scale(FakeRun({}, stats))
    assert [(f.rule, f.change) for f in found] == [("input_scale", {"normalize_input": "conv1.conv"})]


def test_remedies_that_are_model_changes():
    """The causes whose fix is in the model's code name it as a change a rerun can check."""
    v = {"c1": rng.normal(size=(8, 100)), "c2": rng.normal(size=(8, 100))}
    frozen = np.zeros((8, 2), dtype=bool)
    frozen[:, 0] = True
    assert R.frozen_parameters(FakeRun({}, stats_from(v, ["Conv2d", "Linear"], frozen=frozen)))[0].change == {
        "unfreeze": True}
    # a layer that never moved though trainable (update 0): no gradient reached it, which is not requires_grad
    still = np.full((8, 2), 1e-2)
    still[:, 0] = 0.0
    assert R.frozen_parameters(FakeRun({}, stats_from(v, ["Conv2d", "Linear"], update=still)))[0].change == {}
    soft = {"c1": v["c1"], "out": rng.uniform(size=(8, 100))}
    assert R.bounded_outputs(FakeRun({}, stats_from(soft, ["Conv2d", "Softmax"])))[0].change == {"remove": ["out"]}
    # dropout with p = 0.9 (keep 10%): 90% of a dense input zeroed; the meant p is 1 - 0.9
    dense = np.abs(rng.normal(size=(8, 4000))) + 0.1
    dropped = dense * (rng.uniform(size=dense.shape) >= 0.9) / 0.1
    found = R.dropout_high(FakeRun({}, stats_from({"c1": dense, "drop": dropped}, ["Conv2d", "Dropout"])))
    assert [(f.rule, f.change) for f in found] == [("dropout_high", {"dropout": 0.1})]
