"""Inference: the streaming engine, audio I/O, stem plans, pipelines, ensembles and the Separator
API. It uses the zoo to load models and knows nothing of training, evaluation or the CLI."""

from separator.inference.api import load_separator
from separator.inference.engine import StreamingEngine, TTAModel, separate_tensor
from separator.inference.ensemble import Ensemble
from separator.inference.separator import Separator, SeparatorBase

__all__ = [
    "Ensemble",
    "Separator",
    "SeparatorBase",
    "StreamingEngine",
    "TTAModel",
    "load_separator",
    "separate_tensor",
]
