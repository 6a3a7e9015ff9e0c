"""Reading the golden cases in tests/fixtures: a state dict, inputs, reference outputs and metadata.

A case file is a safetensors file holding every state-dict tensor under its own name, the
reference's inputs and outputs under `__name__` keys, and string metadata (for MSST families,
`config` is the exact YAML the reference was built from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from separator.files import parse_yaml

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class GoldenCase:
    path: Path
    state: dict[str, torch.Tensor]  # the model's state dict
    tensors: dict[str, torch.Tensor]  # "__input__", "__output__", ... (names without underscores)
    meta: dict[str, str]

    @property
    def config(self) -> dict[str, Any]:
        """The stored YAML config (MSST families), parsed as an MSST user's YAML would be."""
        return parse_yaml(self.meta["config"], f"{self.path.name}: config")


def load_case(path: str | Path) -> GoldenCase:
    path = Path(path)
    state, tensors = {}, {}
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            if key.startswith("__") and key.endswith("__"):
                tensors[key.strip("_")] = f.get_tensor(key)
            else:
                state[key] = f.get_tensor(key)
    return GoldenCase(path, state, tensors, meta)
