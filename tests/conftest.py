"""Shared test helpers. Tests run offline on the CPU and never write into the working tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def load_golden(name: str):
    """(class name, config dict, state dict, input, output) of a golden file in fixtures/."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = FIXTURES / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    x, y = sd.pop("__input__"), sd.pop("__output__")
    return meta["class"], json.loads(meta["config"]), sd, x, y
