"""Training: recipes (YAML -> frozen dataclasses), random-mix data and augmentation, the
separation loss, and the trainer (AMP, EMA, torchrun/DDP, exact resume)."""

from separator.training.recipe import Recipe, load_recipe
from separator.training.trainer import Trainer, recipe_card, train

__all__ = ["Recipe", "Trainer", "load_recipe", "recipe_card", "train"]
