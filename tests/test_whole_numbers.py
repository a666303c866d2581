"""One check of a whole-number setting (config.check_whole_number): one message style, and a bool is not a
number anywhere (Python counts True as the int 1, which used to pass some of the copies of this check)."""

import pytest
import torch

from convscope.config import TrainConfig, check_whole_number, is_whole_number
from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.experiments.bs_sweep import SweepConfig
from convscope.models import conv_block, simple_cnn
from convscope.stats import ActivationStats, GradientNoiseScale
from convscope.stats.collector import StatsCollector
from convscope.train.lr_finder import check_sweep_args


@pytest.mark.parametrize(("value", "minimum", "expected"), [
    (1, 1, True), (7, 5, True), (0, 0, True), (0, 1, False), (-3, 0, False), (4, 5, False),
    (True, 1, False), (False, 0, False), (2.0, 1, False), ("3", 1, False), (None, 1, False),
])
def test_is_whole_number(value, minimum, expected):
    assert is_whole_number(value, minimum) is expected


def test_the_message_names_the_setting_the_bound_and_the_value():
    check_whole_number("bins", 40)
    with pytest.raises(ConfigError) as info:
        check_whole_number("bins", 0)
    assert str(info.value) == "bins must be a whole number >= 1, got 0"
    with pytest.raises(ConfigError) as info:
        check_whole_number("num_it", True, 5, note="steps in the sweep")
    assert str(info.value) == "num_it must be a whole number >= 5 (steps in the sweep), got True"
    with pytest.raises(ConfigError) as info:
        check_whole_number("shift", -1, 0, unit="pixels")
    assert str(info.value) == "shift must be a whole number of pixels >= 0, got -1"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: TrainConfig(bs=True), "bs (batch size) must be a whole number >= 1, got True"),
    (lambda: TrainConfig(channels=(8, True)), "channels must be whole numbers >= 1, got (8, True)"),
    (lambda: TrainConfig(first_kernel=True), "first_kernel must be a whole number >= 1, got True"),
    (lambda: TrainConfig(limit_train=True), "limit_train must be a whole number >= 1, got True"),
    (lambda: DeviceBatches(torch.zeros(4, 1), torch.zeros(4), True),
     "batch size must be a whole number >= 1, got True"),
    (lambda: check_sweep_args(1e-5, 1.0, 100, repeats=True), "repeats must be a whole number >= 1, got True"),
    (lambda: ActivationStats(every=True), "every must be a whole number >= 1 (or 'auto'), got True"),
    (lambda: StatsCollector(simple_cnn(), sample=True),
     "sample must be a whole number >= 1 (batch items per recorded step), got True"),
    (lambda: GradientNoiseScale(micro_bs=True), "micro_bs must be a whole number >= 1 (or None), got True"),
    (lambda: SweepConfig(base_bs=True), "base_bs must be a whole number >= 1, got True"),
    (lambda: simple_cnn(n_classes=0), "n_classes must be a whole number >= 1, got 0"),
    (lambda: conv_block(1, 8, ks=True), "ks must be a whole number >= 1, got True"),
])
def test_every_whole_number_setting_refuses_a_bool_in_the_one_style(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value) == message
