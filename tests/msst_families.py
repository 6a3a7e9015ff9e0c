"""Helpers for the tests of MSST families: golden cases and MSST's own configs.

`fixtures/<family>/*.safetensors` are golden cases made with MSST ccc011a (see golden_cases.py).
`fixtures/msst_configs/*.yaml` are configs shipped in MSST's `configs/` at ccc011a, and
`<config>.<family>.keys.json` the state-dict keys and shapes of MSST's own module built from that
config on the meta device (MSST's `get_model_from_config` constructors at ccc011a), to compare
with ours key for key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from separator.nn import get_family
from tests.golden_cases import FIXTURES, load_case, parse_yaml

CONFIGS = FIXTURES / "msst_configs"


def golden_paths(family: str) -> list[Path]:
    return sorted((FIXTURES / family).glob("*.safetensors"))


def card_fields(family: str, config: dict) -> dict:
    return get_family(family).from_msst(config)


def build(family: str, fields: dict) -> torch.nn.Module:
    return get_family(family).build(
        fields["model"],
        sample_rate=fields["sample_rate"],
        stems=fields["stems"],
        chunk_size=fields["chunk_size"],
    )


def run_golden(family: str, path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """(our output, MSST's `__output__`, our module) for one case: config from the stored YAML,
    card fields through `from_msst`, module through `build`, `load_state_dict(strict=True)`."""
    case = load_case(path)
    module = build(family, card_fields(family, case.config))
    module.load_state_dict(case.state, strict=True)
    module.eval()
    with torch.no_grad():
        out = module(case.tensors["input"])
    return out, case.tensors["output"], module


def msst_config(name: str) -> dict:
    return parse_yaml((CONFIGS / f"{name}.yaml").read_text(), name)


def msst_keys(name: str, family: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((CONFIGS / f"{name}.{family}.keys.json").read_text())
    return {k: tuple(v) for k, v in data.items()}


def meta_keys(family: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Our module for an MSST config, built on the meta device: key -> shape."""
    with torch.device("meta"):
        module = build(family, card_fields(family, config))
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
