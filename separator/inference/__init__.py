"""Inference: the streaming engine, audio I/O, stem plans, pipelines, ensembles, chains and the
Separator API. It uses the zoo to load models and knows nothing of training, evaluation or the
CLI."""

from separator.inference.api import load_separator
from separator.inference.chain import Chain
from separator.inference.engine import StreamingEngine, TTAModel, separate_tensor
from separator.inference.ensemble import Ensemble
from separator.inference.file_ensemble import ensemble_files
from separator.inference.separator import Separator, SeparatorBase

__all__ = [
    "Chain",
    "Ensemble",
    "Separator",
    "SeparatorBase",
    "StreamingEngine",
    "TTAModel",
    "ensemble_files",
    "load_separator",
    "separate_tensor",
]
