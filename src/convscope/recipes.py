"""Named training recipes: TrainConfig settings to start from (`convscope train --recipe NAME`).

    from convscope.config import TrainConfig
    from convscope.recipes import recipe_settings
    cfg = TrainConfig(**recipe_settings("fast"))                 # or recipe_settings("fast", epochs=1.5)

book: the fastai book's chapter 13 set-up (simple_cnn + BatchNorm, bs 512, fit_one_cycle(1, 0.06)).
fast: the quickest recipe found to reach >= 99.0% MNIST test accuracy with the statistics on; how it was
      chosen (on a held-out 10k of the training set, never on the test set) is in docs/fast_recipe.md.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

RECIPES: dict[str, dict[str, Any]] = {
    "book": {},  # TrainConfig's defaults are the book's
    # The book recipe cut to 3 epochs (chosen on a held-out 10k of the training set: it matches the
    # 5-epoch recipe there), in channels_last memory layout (the same arithmetic, ~10-20% faster on CPU
    # convolutions). See docs/fast_recipe.md for what else was tried.
    "fast": {"epochs": 3, "lr": 0.1, "channels_last": True},
}


def recipe_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """The TrainConfig settings of recipe `name`, with `overrides` on top (a new dict each call), e.g.
    `TrainConfig(**recipe_settings("fast", epochs=1.5, seed=1))`."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], **overrides}
