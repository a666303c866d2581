"""One list of optimizer names: what TrainConfig accepts is what the Learner can build, and the same name
is refused by both with the same message."""

import pytest
import torch
from torch import nn

from convscope.config import OPTIMIZER_NAMES, TrainConfig
from convscope.errors import ConfigError
from convscope.train.learner import OPTIMIZERS, Learner


def test_the_learner_builds_exactly_the_optimizers_a_config_may_name():
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_name_works_in_a_config_and_in_a_learner(name):
    assert TrainConfig(opt=name).opt == name
    learn = Learner(nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))], opt_func=name)
    learn.create_opt()
    assert isinstance(learn.opt, torch.optim.Optimizer)


@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_an_unknown_name_is_refused_by_both_with_one_message(name):
    with pytest.raises(ConfigError) as from_config:
        TrainConfig(opt=name)
    with pytest.raises(ConfigError) as from_learner:
        Learner(nn.Linear(2, 2), [], opt_func=name)
    assert str(from_config.value) == str(from_learner.value) == f"unknown optimizer {name!r}; choose adamw or sgd"
