"""NaN/inf model output: the one error every engine raises for it, naming the model, the
precision and where in the input the first bad chunk starts."""

from __future__ import annotations

import torch
from torch import nn

from separator.errors import SeparatorError

PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class NonFiniteOutputError(SeparatorError):
    """The model returned NaN or infinite samples (corrupt weights, or a reduced-precision
    overflow). `seconds`: where the first bad chunk starts in the input."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def model_name(model: nn.Module) -> str:
    """How messages name a model: the card's name the zoo sets (`model_name`), else its class."""
    return str(getattr(model, "model_name", None) or type(model).__name__)


def precision_name(model: nn.Module, autocast_dtype: torch.dtype | None) -> str:
    """ "fp32", "bf16" or "fp16": the autocast dtype, else the model's parameter dtype."""
    if autocast_dtype is not None:
        return PRECISION_NAMES.get(autocast_dtype, str(autocast_dtype))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return PRECISION_NAMES.get(dtype, str(dtype)) if dtype is not None else "fp32"


def non_finite_error(name: str, precision: str, seconds: float) -> NonFiniteOutputError:
    """The error for NaN/inf model output whose first bad chunk starts at `seconds`."""
    hint = (
        f"{precision} can overflow: try `precision` fp32"
        if precision != "fp32"
        else "its weights may hold NaN/inf: check the checkpoint"
    )
    return NonFiniteOutputError(
        f"model {name} returned NaN or infinite samples at precision {precision}, first in the "
        f"chunk at {seconds:.2f} s of the input; {hint}",
        seconds,
    )
