"""What a command runs, as plain functions: a training run into a run folder (`run_training`), the
recipes, the LR finder's study, the lr-schedule study and the batch-size sweep. `setup` holds the one
copy of what they all set up (data, model, run names).

    from convscope.config import TrainConfig
    from convscope.experiments import recipe_settings, run_training
    result = run_training(TrainConfig(**recipe_settings("fast", epochs=1.5)))
"""

from convscope.experiments.recipes import RECIPES, recipe_settings
from convscope.experiments.run import TrainResult, resume_config, run_training
from convscope.experiments.setup import build_batches, build_model, load_data

__all__ = ["RECIPES", "TrainResult", "build_batches", "build_model", "load_data", "recipe_settings",
           "resume_config", "run_training"]
