"""Running an MSST golden case through the family contract: YAML -> card -> module -> output.

Used by the tests of the 2025-26 RoFormers, the experimental RoFormers and the Conformers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from golden_cases import FIXTURES, load_case

from separator.nn import get_family, infer_msst_family

MSST_CONFIGS = FIXTURES / "msst_configs"


def case_paths(family: str) -> list[Path]:
    return sorted((FIXTURES / family).glob("*.safetensors"))


def build_from_case(path: Path, family: str):
    """(case, model): the model built as a card from the stored YAML, weights loaded strictly."""
    case = load_case(path)
    fam = get_family(family)
    card = fam.from_msst(case.config)
    model = fam.build(
        card["model"],
        sample_rate=card["sample_rate"],
        stems=card["stems"],
        chunk_size=card["chunk_size"],
    ).eval()
    model.load_state_dict(case.state, strict=True)
    return case, model


def check_golden(path: Path, family: str) -> float:
    """Reproduce the case's `__output__` (atol 1e-5); returns the max abs difference.

    The reference may drop the stem axis of a one-stem model and may return floor(T/hop)·hop
    samples; ours always has the stem axis and the input's length, so the comparison puts the
    axis back and runs over the reference's length.
    """
    case, model = build_from_case(path, family)
    assert infer_msst_family(case.config["model"]).name == family
    x, y = case.tensors["input"], case.tensors["output"]
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (x.shape[0], model.config.num_stems, x.shape[1], x.shape[2])
    if y.dim() == 3:
        y = y.unsqueeze(1)
    assert y.shape[:3] == out.shape[:3] and y.shape[-1] <= x.shape[-1]
    ours = out[..., : y.shape[-1]]
    torch.testing.assert_close(ours, y, atol=1e-5, rtol=0)
    return float((ours - y).abs().max())
