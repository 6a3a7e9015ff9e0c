"""The model and objective a recipe trains: any registered family that separates, its card, and
its loss (`separator.training.losses`) resolved against the model's config."""

from __future__ import annotations

import dataclasses
from dataclasses import is_dataclass

from torch import nn

from separator.errors import ConfigError
from separator.training.losses import LossSpec, loss_spec
from separator.training.recipe import Recipe
from separator.zoo import ModelCard, build_model


def recipe_card(recipe: Recipe) -> ModelCard:
    """The model card of a recipe's model (its own model arguments, stems, rate and chunk)."""
    return ModelCard(
        name=recipe.name,
        architecture=recipe.model.architecture,
        model=dict(recipe.model.args),
        stems=recipe.model_stems,
        sample_rate=recipe.audio.sample_rate,
        chunk_size=recipe.audio.chunk_size,
        license=recipe.license,
        source=f"trained with separator recipe {recipe.name}",
    )


def build_training_model(recipe: Recipe, card: ModelCard) -> nn.Module:
    """The recipe's model, from any registered family that separates (whose outputs are parts of
    the mixture: `Family.residuals`); `training.grad_checkpoint` sets `use_torch_checkpoint`
    where the family's config has it (the RoFormers)."""
    arch = recipe.model.architecture
    model = build_model(card)
    if not getattr(model, "residuals", True):
        raise ConfigError(
            f"model.architecture {arch}: its output is not a part of the mixture (restoration), "
            "and the trainer learns to separate mixed stems; it cannot train this family"
        )
    if recipe.training.grad_checkpoint:
        config = getattr(model, "config", None)
        fields = {f.name for f in dataclasses.fields(config)} if is_dataclass(config) else ()
        if "use_torch_checkpoint" not in fields:
            raise ConfigError(
                f"training.grad_checkpoint: {arch} models have no gradient checkpointing "
                "(no model.use_torch_checkpoint); set it to false"
            )
        args = dict(recipe.model.args, use_torch_checkpoint=True)
        model = build_model(dataclasses.replace(card, model=args))
    return model


def training_loss(recipe: Recipe, model: nn.Module) -> LossSpec:
    """The recipe's `loss:` resolved against the model's config (see `training.losses`)."""
    spec = loss_spec(recipe.loss, getattr(model, "config", None))
    if spec.masked_mse and spec.coarse and recipe.training.batch_size < 2:
        raise ConfigError(
            "loss.masked_mse with loss.coarse needs training.batch_size >= 2: it drops each "
            "stem's errors at or above their quantile over the batch, so one example is always "
            "dropped (MSST's masked_loss)"
        )
    return spec
