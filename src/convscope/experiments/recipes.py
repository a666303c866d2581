"""Named training recipes: TrainConfig settings to start from (`convscope train --recipe NAME`).

    from convscope.config import TrainConfig
    from convscope.experiments.recipes import recipe_settings
    cfg = TrainConfig(**recipe_settings("fast"))                 # or recipe_settings("fast", epochs=1.5)

book: the fastai book's chapter 13 set-up (simple_cnn + BatchNorm, bs 512, fit_one_cycle(1, 0.06)).
fast: the quickest recipe found to reach >= 99.0% MNIST test accuracy with the statistics on; how it was
      chosen (on a held-out 10k of the training set, never on the test set) is in docs/fast_recipe.md.
"""

from __future__ import annotations

from typing import Any

from convscope.errors import ConfigError

RECIPES: dict[str, dict[str, Any]] = {
    "book": {},  # TrainConfig's defaults are the book's
    # The book's model body and optimizer for 3 epochs at lr 0.1, with these changes (chosen on a held-out 10k
    # of the training set, never on the test set; docs/fast_recipe.md has the search):
    #   crop 20      the centre 20x20 pixels, where MNIST's digits are (~half the work of every conv layer)
    #   shift 1      each training image is that crop moved by up to 1 pixel at random (+0.1 point held-out)
    #   head linear  the last conv on the 2x2 grid is a Linear layer in disguise (models/cnn.py)
    #   freeze       conv1 stops training after 30% of the steps and conv2 after 80%: no backward pass
    #                through them from then on (train/freeze.py)
    #   channels_last  NHWC layout: the same arithmetic, faster CPU convolutions
    "fast": {"epochs": 3, "lr": 0.1, "channels_last": True, "head": "linear", "crop": 20, "shift": 1,
             "freeze": {"conv1": 0.3, "conv2": 0.8}},
}


def recipe_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """The TrainConfig settings of recipe `name`, with `overrides` on top (a new dict each call), e.g.
    `TrainConfig(**recipe_settings("fast", epochs=1.5, seed=1))`."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], **overrides}
