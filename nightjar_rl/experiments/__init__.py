"""Experiments: typed configs, training, evaluation over a rate sweep, the run-folder pipeline."""

from nightjar_rl.experiments.config import ExperimentConfig, experiment_from_dict, load_experiment
from nightjar_rl.experiments.fields import ExperimentError

__all__ = ["ExperimentConfig", "ExperimentError", "experiment_from_dict", "load_experiment"]
