"""Each figure draws exactly the recorded arrays of a real run, made without pyplot's global state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib import _pylab_helpers
from matplotlib.figure import Figure

from convscope import load_run
from convscope.errors import ConfigError
from convscope.plots import activations as plots

LAYER = "conv2.act"


def ydata(line) -> np.ndarray:
    return np.asarray(line.get_ydata(), dtype=np.float64)


def test_the_shared_run_recorded_every_layer_at_its_cadence(stats):
    from .conftest import EVERY

    assert stats.n_steps == 120 // EVERY and stats.bins == 40 and len(stats.layers) == 14
    assert np.array_equal(stats.steps, np.arange(0, 120, EVERY))


def test_plot_layer_stats_draws_mean_std_and_percent_near_zero(stats):
    i = stats.index(LAYER)
    fig = plots.plot_layer_stats(stats, LAYER)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    for ax, expected in zip(fig.axes, (stats.mean[:, i], stats.std[:, i], 100 * stats.near_zero[:, i])):
        (line,) = ax.lines
        assert np.array_equal(line.get_xdata(), stats.steps)
        np.testing.assert_allclose(ydata(line), expected)
    assert LAYER in fig.get_suptitle()


def test_color_dim_image_is_log1p_hist_with_low_values_at_the_bottom(stats):
    i = stats.index(LAYER)
    fig = plots.color_dim(stats, LAYER)
    ax = fig.axes[0]
    (image,) = ax.images
    np.testing.assert_allclose(image.get_array(), np.log1p(stats.hist[:, i].astype(np.float64)).T)
    assert image.origin == "lower" and image.get_cmap().name == "viridis"
    x0, x1, y0, y1 = image.get_extent()
    assert (y0, y1) == tuple(stats.hist_range[i])  # the y axis is in activation values, 0 .. 10
    assert x0 < stats.steps[0] < stats.steps[-1] < x1
    assert len(fig.axes) == 2, "a colour bar says what the colours mean"


def test_color_dim_without_histograms_says_so(stats):
    no_hist = dataclasses.replace(stats, hist=np.zeros((stats.n_steps, len(stats.layers), 0), np.float32))
    with pytest.raises(ValueError, match="with_hist=True"):
        plots.color_dim(no_hist, LAYER)
    with pytest.raises(ConfigError):
        plots.color_dim(no_hist, LAYER)


def test_plot_dead_draws_dead_and_near_zero_shares(stats):
    i = stats.index(LAYER)
    fig = plots.plot_dead(stats, LAYER)
    dead, near = fig.axes[0].lines
    np.testing.assert_allclose(ydata(dead), 100 * stats.dead[:, i])
    np.testing.assert_allclose(ydata(near), 100 * stats.near_zero[:, i])


def test_plot_layer_combines_the_three_on_shared_steps(stats):
    i = stats.index(LAYER)
    fig = plots.plot_layer(stats, LAYER)
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 1
    np.testing.assert_allclose(images[0].get_array(), np.log1p(stats.hist[:, i].astype(np.float64)).T)
    lines = [ydata(line) for ax in fig.axes for line in ax.lines]
    for expected in (stats.mean[:, i], stats.std[:, i], 100 * stats.dead[:, i]):
        assert any(np.allclose(y, expected) for y in lines)
    assert sum(np.allclose(y, 100 * stats.near_zero[:, i]) for y in lines) == 1  # drawn once, not twice
    lo, hi = stats.hist_range[i]
    assert f"range [{lo:g}, {hi:g}]" in fig.axes[3].get_title()  # the histogram says what it covers


def test_each_histogram_states_its_range_and_what_a_0_10_range_leaves_out_of_a_signed_layer(stats):
    """The default range is signed before an activation ([-5, 5]) and [0, 10] after a ReLU; each figure says
    which. A conv output over [0, 10] (fastai's range, and runs recorded before) leaves out its negative half,
    and says so."""
    i = stats.index("conv2.conv")
    assert stats.kinds[i] == "Conv2d" and tuple(stats.hist_range[i]) == (-5.0, 5.0)
    assert tuple(stats.hist_range[stats.index(LAYER)]) == (0.0, 10.0)
    assert "range [-5, 5] " in plots.color_dim(stats, "conv2.conv").axes[0].get_title()
    relu = plots.color_dim(stats, LAYER).axes[0].get_title()
    assert "range [0, 10] " in relu and "not counted" not in relu  # a ReLU's output is >= 0
    fastai_range = stats.hist_range.copy()
    fastai_range[i] = (0.0, 10.0)
    title = plots.color_dim(dataclasses.replace(stats, hist_range=fastai_range), "conv2.conv").axes[0].get_title()
    assert "range [0, 10], values below 0 not counted" in title


def test_a_pre_activation_layer_shows_the_shares_below_and_near_zero_beside_fastais(stats):
    """conv2.bn: fastai's near zero, |x| <= 0.05 and x < 0, each drawn from its own recorded array and named."""
    i = stats.index("conv2.bn")
    fig = plots.plot_layer_stats(stats, "conv2.bn")
    lines = {line.get_label(): ydata(line) for line in fig.axes[2].lines}
    np.testing.assert_allclose(lines["near zero (<= 0.05, fastai's)"], 100 * stats.near_zero[:, i])
    np.testing.assert_allclose(lines["|x| <= 0.05"], 100 * stats.abs_near_zero[:, i])
    np.testing.assert_allclose(lines["x < 0"], 100 * stats.negative[:, i])
    # The book's BatchNorm follows a ReLU: the normalised zeros land below zero, so well over a third of its
    # values are negative while few are actually near zero; fastai's share (<= 0.05) holds every negative one.
    assert 35 < np.nanmean(lines["x < 0"]) < 80 and np.nanmean(lines["|x| <= 0.05"]) < 10
    assert np.all(lines["near zero (<= 0.05, fastai's)"] >= lines["x < 0"] - 1e-9)
    assert [line.get_label() for line in plots.plot_layer_stats(stats, LAYER).axes[2].lines] == [
        "near zero (<= 0.05, fastai's)"]  # after a ReLU nothing is below zero: fastai's share alone


def test_plot_overview_has_a_panel_per_layer_and_heat_maps_of_every_layer(stats):
    fig = plots.plot_overview(stats)
    n = len(stats.layers)
    panels = fig.axes[:n]
    ax_near, ax_actual, ax_dead = (ax for ax in fig.axes[n:] if ax.images)
    assert [ax.get_title() for ax in panels] == stats.layers  # small multiples: one layer each, named
    for j, ax in enumerate(panels):
        mean, std = (line for line in ax.lines if line.get_label() in ("mean", "std"))
        np.testing.assert_allclose(ydata(mean), stats.mean[:, j])
        np.testing.assert_allclose(ydata(std), stats.std[:, j])
    assert len({ax.get_ylim() for ax in panels}) == 1  # one shared scale
    np.testing.assert_allclose(ax_near.images[0].get_array(), 100 * stats.near_zero.T)
    np.testing.assert_allclose(ax_actual.images[0].get_array(), 100 * stats.abs_near_zero.T)
    np.testing.assert_allclose(ax_dead.images[0].get_array(), 100 * stats.dead.T)
    assert [t.get_text() for t in ax_near.get_yticklabels()] == stats.layers
    assert "fastai" in ax_near.get_title() and "|x| <= 0.05" in ax_actual.get_title()
    assert "dark" in ax_dead.get_title()
    older = plots.plot_overview(dataclasses.replace(stats, abs_near_zero=None))  # a run recorded before it
    assert len([ax for ax in older.axes[n:] if ax.images]) == 2


def test_the_dead_channel_heat_map_says_when_no_channel_died(stats):
    """The shared run (BatchNorm, 1cycle) has no dead channel: the all-dark panel says so in words."""
    assert not np.nanmax(stats.dead)
    def dead_map(fig):
        return [ax for ax in fig.axes if ax.images][-1]

    assert [t.get_text() for t in dead_map(plots.plot_overview(stats)).texts] == [
        "no dead channel in any layer\nat any recorded step"]
    dead = stats.dead.copy()
    dead[-1, 0] = 0.5  # one dead share anywhere: no such note
    assert not dead_map(plots.plot_overview(dataclasses.replace(stats, dead=dead))).texts


def test_plot_grad_stats_skips_layers_without_parameters(stats):
    fig = plots.plot_grad_stats(stats)
    with_params = [n for n in stats.layers if not n.endswith(".act")]  # ReLUs have no parameters
    k = len(with_params)
    norms, ratios = fig.axes[:k], fig.axes[k:2 * k]
    assert [ax.get_title() for ax in norms] == [ax.get_title() for ax in ratios] == with_params
    for name, ax_norm, ax_ratio in zip(with_params, norms, ratios):
        np.testing.assert_allclose(ydata(ax_norm.lines[0]), stats.grad_norm[:, stats.index(name)])
        np.testing.assert_allclose(ydata(ax_ratio.lines[0]), stats.update_ratio[:, stats.index(name)])
        assert np.all(ydata(ax_ratio.lines[1]) == 1e-3)  # the reference line
        assert ax_norm.get_yscale() == ax_ratio.get_yscale() == "log"
    assert len({ax.get_ylim() for ax in norms}) == len({ax.get_ylim() for ax in ratios}) == 1


def test_plot_grad_stats_without_gradients_says_so(stats):
    nan = np.full_like(stats.grad_norm, np.nan)
    with pytest.raises(ConfigError, match="no gradient statistics"):
        plots.plot_grad_stats(dataclasses.replace(stats, grad_norm=nan, update_ratio=nan))


def test_plot_loss_draws_step_losses_and_epoch_metrics(trained):
    run = load_run(trained.run_dir)
    fig = plots.plot_loss(run.steps, run.metrics)
    ax_step, ax_epoch = fig.axes[:2]
    raw, smoothed, valid = ax_step.lines
    loss = np.asarray(run.steps["loss"], dtype=np.float64)
    np.testing.assert_allclose(ydata(raw), loss)
    # centred, so it does not trail the loss: the mean of the 7 steps around each step (120 steps // 20 = 6,
    # made odd: 3 each side; fewer at the ends)
    expected = [loss[max(0, k - 3):k + 4].mean() for k in range(len(loss))]
    np.testing.assert_allclose(ydata(smoothed), expected, rtol=1e-12)
    assert valid.get_xdata()[0] == run.steps["step"][-1]  # validated at the epoch's last step
    assert ydata(valid)[0] == pytest.approx(run.metrics[0]["valid_loss"])
    accuracy_axis = fig.axes[2]
    assert ydata(accuracy_axis.lines[0])[0] == pytest.approx(run.metrics[0]["accuracy"])


def test_smooth_is_fastais_debiased_moving_average():
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    avg, expected = 0.0, []
    for n, v in enumerate(values, 1):
        avg = 0.9 * avg + 0.1 * v
        expected.append(avg / (1 - 0.9**n))
    np.testing.assert_allclose(plots.smooth(values, beta=0.9), expected)


def test_live_learner_and_saved_run_give_the_same_figures(trained, stats):
    live = trained.learn.activation_stats
    a = live.color_dim(LAYER).axes[0].images[0].get_array()
    b = stats.color_dim(LAYER).axes[0].images[0].get_array()
    np.testing.assert_array_equal(a, b)
    assert isinstance(live.plot_layer_stats(LAYER), Figure) and isinstance(stats.plot_dead(LAYER), Figure)


def test_no_figure_is_left_in_pyplot(stats):
    plots.plot_overview(stats)
    plots.color_dim(stats, 0)
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0
