"""Named recipes: what they set, how the command line combines them with explicit options."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from convscope.cli import app
from convscope.config import TrainConfig
from convscope.errors import ConfigError
from convscope.experiments.recipes import RECIPES, recipe_settings
from convscope.stats.compute import histogram


def test_every_recipe_is_a_valid_config_and_book_is_the_default():
    for name in RECIPES:
        TrainConfig(**recipe_settings(name))
    assert TrainConfig(**recipe_settings("book")) == TrainConfig()


def test_unknown_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown recipe 'turbo'; choose one of book, fast"):
        recipe_settings("turbo")


def test_recipe_settings_are_a_copy_with_overrides_on_top():
    recipe_settings("fast")["epochs"] = 99
    assert RECIPES["fast"]["epochs"] != 99
    settings = recipe_settings("fast", epochs=1.5, seed=3)
    assert settings == {**RECIPES["fast"], "epochs": 1.5, "seed": 3}
    assert TrainConfig(**settings).epochs == 1.5


def test_cli_recipe_with_an_explicit_option_overrides_only_that_option(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    result = CliRunner().invoke(app, ["train", "--recipe", "fast", "--epochs", "0.5", "--limit-train", "2048",
                                      "--out", str(tmp_path), "--name", "r"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    fast = recipe_settings("fast")
    assert config["recipe"] == "fast" and config["epochs"] == 0.5
    assert config["lr"] == fast["lr"] and config["channels_last"] is True
    steps = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 1  # half an epoch: one (partial) epoch, validated at its end


def test_histogram_of_a_channels_last_activation_equals_the_contiguous_one():
    x = torch.randn(16, 8, 7, 7).abs()
    assert torch.equal(histogram(x.contiguous(memory_format=torch.channels_last), 40, 0.0, 10.0, 5),
                       histogram(x, 40, 0.0, 10.0, 5))
