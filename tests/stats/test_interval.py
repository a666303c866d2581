"""every="auto": the interval chosen from measured time (stats/interval.py).

The choice is checked against the rule written out by hand, and the rows it keeps against an exact run
(every=1) on the same weights and batches: the kept rows must be those steps' rows, value for value.
Time is a test clock here, advanced where the test's loop spends it (loading a batch, the step itself, the
extra time of a recorded row), so the choice is known in advance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convscope import load_run
from convscope.errors import ConfigError, RunError
from convscope.models.cnn import simple_cnn
from convscope.report.html import _interval_note
from convscope.runs.stats_data import ActivationStatsData
from convscope.stats import ActivationStats, watch
from convscope.stats.interval import AUTO_MAX, AUTO_START, DECIDE_AT, DEFAULT_BUDGET, IntervalChooser, choose_every
from convscope.train.callback import Callback
from convscope.train.learner import Learner

BS = 32


def by_hand(row: float, step: float, budget: float) -> int:
    """The rule as the docstring states it: the smallest 4 * 2**k <= 64 with row / (every * step) <= budget."""
    for every in (4, 8, 16, 32, 64):
        if row / (every * step) <= budget:
            return every
    return 64


@pytest.mark.parametrize("row", [0.0, 0.01, 0.08, 0.1, 0.5, 1.0, 2.0, 100.0])
@pytest.mark.parametrize("budget", [0.01, 0.02, 0.05])
def test_the_interval_is_the_narrowest_within_budget(row, budget):
    assert choose_every(row, 1.0, budget) == by_hand(row, 1.0, budget)


class Clock:
    """A test clock: time passes only where the test says (`advance`), and reading it changes nothing."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_the_chooser_times_the_window_and_decides_once():
    clock = Clock()
    chooser = IntervalChooser(budget=0.02, clock=clock)
    chosen = []
    for step in range(100):
        recorded = step % AUTO_START == 0
        clock.advance(1.5 if recorded else 1.0)
        chosen.append(chooser.step_ended(step, recorded))
    # row cost 0.5 s on 1 s steps: 0.5 / (every * 1) <= 0.02 needs every >= 25
    assert [c for c in chosen if c is not None] == [32]
    assert chosen.index(32) == DECIDE_AT - 1
    assert chooser.measured == {"row_ms": 500.0, "step_ms": 1000.0, "budget": 0.02, "every": 32}


def test_a_resume_keeps_the_interval_its_checkpoint_was_saved_with():
    clock = Clock()
    chooser = IntervalChooser(clock=clock)
    saved = {"row_ms": 2.0, "step_ms": 10.0, "budget": 0.01, "every": 32}
    chooser.keep(saved)
    chosen = []
    for step in range(DECIDE_AT + 5, DECIDE_AT + 60):
        clock.advance(10.0 if step % 4 == 0 else 1.0)  # rows that look very expensive: no new choice made
        chosen.append(chooser.step_ended(step, step % 4 == 0))
    assert chosen == [None] * 55 and chooser.measured == saved


@pytest.mark.parametrize("resumed_at", [1, 13, DECIDE_AT - 1, DECIDE_AT + 5])
def test_a_run_resumed_before_its_choice_times_a_window_of_its_own(resumed_at):
    """Interrupted before the choice (its checkpoint holds none): the resumed run skips WARMUP steps from
    where it resumed, times the next WINDOW, and chooses; without that it would record every 4th step to
    its end."""
    clock = Clock()
    chooser = IntervalChooser(budget=0.02, clock=clock)
    chosen = {}
    for step in range(resumed_at, resumed_at + 100):
        chooser.step_started()
        clock.advance(1.5 if step % AUTO_START == 0 else 1.0)
        chosen[step] = chooser.step_ended(step, step % AUTO_START == 0)
    assert {s: c for s, c in chosen.items() if c is not None} == {resumed_at + DECIDE_AT - 1: 32}
    assert chooser.measured["row_ms"] == 500.0 and chooser.measured["step_ms"] == 1000.0


def test_restored_statistics_bring_their_choice_or_leave_the_window_to_the_resumed_run(mnist_tensors):
    """The collector's side of a resume: statistics saved after the choice hand it to the chooser (kept, no
    new window); statistics saved before it (no choice in them) leave the resumed run to time its own."""
    from convscope.stats.collector import StatsCollector

    x, y, _, _ = mnist_tensors
    model = simple_cnn()
    with watch(model) as w:
        train(model, w, x, y, DECIDE_AT + 4, extra=100.0)  # rows look very expensive: the widest interval
    chosen = w.data
    assert chosen.every == AUTO_MAX and chosen.interval["every"] == AUTO_MAX
    resumed = StatsCollector(simple_cnn(), every="auto")
    resumed.restore(chosen, before_step=DECIDE_AT + 4)
    assert resumed.chooser.done and resumed.chooser.measured == chosen.interval and resumed.buffer.every == AUTO_MAX

    early = simple_cnn()
    with watch(early) as w:
        train(early, w, x, y, 10)
    assert w.data.interval == {} and w.data.every == AUTO_START
    resumed = StatsCollector(simple_cnn(), every="auto")
    resumed.restore(w.data, before_step=10)
    assert not resumed.chooser.done and resumed.buffer.every == AUTO_START


def test_a_run_shorter_than_the_window_keeps_the_starting_interval(mnist_tensors):
    x, y, _, _ = mnist_tensors
    model = simple_cnn()
    with watch(model) as w:
        train(model, w, x, y, DECIDE_AT - 1, extra=100.0)  # rows look very expensive
    assert w.data.every == AUTO_START
    np.testing.assert_array_equal(w.data.steps, np.arange(0, DECIDE_AT - 1, AUTO_START))


def train(model, w, x, y, steps: int, extra: float = 0.0) -> None:
    """A hand-written loop whose steps take 1 s on the test clock: 0.25 s getting the batch, 0.75 s in the
    forward and backward pass, `extra` more when the step records a row."""
    clock = Clock()
    if w.collector.chooser is not None:
        w.collector.chooser.clock = clock
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        xb, yb = x[step * BS:(step + 1) * BS], y[step * BS:(step + 1) * BS]
        clock.advance(0.25)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        clock.advance(0.75 + (extra if w.collector.slot >= 0 else 0.0))
        opt.step()
        w.step(loss)
        opt.zero_grad()


@pytest.mark.parametrize("extra, every", [(0.1, 16), (50.0, AUTO_MAX)])
def test_watch_keeps_the_rows_of_the_chosen_interval_exactly(mnist_tensors, tmp_path, extra, every):
    x, y, _, _ = mnist_tensors
    steps = 3 * AUTO_MAX + 8
    torch.manual_seed(0)
    model = simple_cnn()
    exact_model = simple_cnn()
    exact_model.load_state_dict(model.state_dict())
    with watch(model, run_dir=tmp_path / "run") as w:
        train(model, w, x, y, steps, extra)
    with watch(exact_model, every=1) as exact:
        train(exact_model, exact, x, y, steps)
    auto, ref = w.data, exact.data
    assert auto.every == every == by_hand(extra, 1.0, DEFAULT_BUDGET)
    np.testing.assert_array_equal(auto.steps, np.arange(0, steps, every))
    rows = np.searchsorted(ref.steps, auto.steps)
    for name in ("mean", "std", "near_zero", "dead", "hist", "grad_norm", "update_ratio"):
        np.testing.assert_array_equal(getattr(auto, name), getattr(ref, name)[rows], err_msg=name)
    saved = load_run(tmp_path / "run").activation_stats  # what a later process and the report see
    assert saved.every == every and saved.interval == {"row_ms": extra * 1e3, "step_ms": 1e3, "budget": DEFAULT_BUDGET,
                                                        "every": every}
    assert ref.interval == {}  # a fixed interval was not chosen
    assert _interval_note(saved).endswith(f"cost {extra * 1e3:.1f} ms on 1000.0 ms steps")


class SlowSteps(Callback):
    """Time on a test clock for ActivationStats' chooser: 1 s in each step's forward and backward pass, `extra`
    more when it records a row, and 0.25 s after each step (the next batch's loading: not the step's time)."""

    order = -10  # after ActivationStats, which opens the row in before_batch and closes it in after_batch

    def __init__(self, extra: float) -> None:
        self.extra, self.clock = extra, Clock()

    def before_fit(self) -> None:
        self.collector = self.learn.activation_stats.collector
        self.collector.chooser.clock = self.clock

    def after_backward(self) -> None:
        self.clock.advance(1.0 + (self.extra if self.collector.slot >= 0 else 0.0))

    def after_batch(self) -> None:
        self.clock.advance(0.25)


def test_the_learner_chooses_the_same_way(mnist_tensors):
    x, y, _, _ = mnist_tensors
    batches = [(x[i * BS:(i + 1) * BS], y[i * BS:(i + 1) * BS]) for i in range(100)]
    torch.manual_seed(0)
    learn = Learner(simple_cnn(), batches, cbs=[ActivationStats(), SlowSteps(0.5)], opt_func="sgd", lr=0.05)
    learn.fit(1)
    data = learn.activation_stats.data
    assert data.every == 64 == by_hand(0.5, 1.0, DEFAULT_BUDGET)  # 0.5 s rows on 1 s steps at 1%: every >= 50
    np.testing.assert_array_equal(data.steps, [0, 64])
    assert learn.activation_stats.collector.chooser.measured == {"row_ms": 500.0, "step_ms": 1000.0,
                                                                 "budget": DEFAULT_BUDGET, "every": 64}


@pytest.mark.parametrize("settings, message", [
    ({"every": "often"}, "every must be a whole number >= 1 (or 'auto'), got 'often'"),
    ({"budget": 0}, "budget must be a share of training time between 0 and 1, got 0"),
    ({"budget": 1.5}, "budget must be a share of training time between 0 and 1, got 1.5"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        ActivationStats(**settings)



@pytest.mark.parametrize("value", ["[1, 2]", '{"every": "many"}', "not json"])
def test_a_damaged_interval_record_is_named(tmp_path, value):
    data = ActivationStatsData(layers=["a"], steps=np.zeros(0, dtype=np.int64), mean=np.zeros((0, 1)),
                               std=np.zeros((0, 1)), near_zero=np.zeros((0, 1)), dead=np.zeros((0, 1)),
                               hist=np.zeros((0, 1, 2)), hist_range=np.zeros((1, 2)), grad_norm=np.zeros((0, 1)),
                               update_ratio=np.zeros((0, 1)))
    data.save(tmp_path / "stats.npz")
    arrays = dict(np.load(tmp_path / "stats.npz"))
    arrays["interval"] = np.asarray(value)
    np.savez(tmp_path / "stats.npz", **arrays)
    with pytest.raises(RunError, match="stats.npz: interval is not a JSON object of numbers; the file is damaged"):
        ActivationStatsData.load(tmp_path / "stats.npz")
