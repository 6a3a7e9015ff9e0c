"""bf16 autocast runs without torch's dtype-mismatch warning (RMSNorm normalises in its gain's
dtype) and gives what the model gives in float32, to bf16 accuracy."""

from __future__ import annotations

import warnings

import torch
from test_cli_separate import TINY_BS

from separator.inference import Separator
from separator.zoo import ModelCard, build_model


def test_bf16_separation_raises_no_warning():
    card = ModelCard(name="tiny", architecture="bs_roformer", model=dict(TINY_BS),
                     stems=("vocals", "other"), sample_rate=44100, chunk_size=8192)  # fmt: skip
    model = build_model(card).eval()
    assert hasattr(model, "final_norm")  # the RMSNorm with a gain that met bf16 input
    mix = 0.1 * torch.randn(2, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mismatch dtype between input and weight" was a warning
        bf16 = Separator(model, device="cpu", precision="bf16").separate_tensor(mix, 44100)
    fp32 = Separator(model, device="cpu").separate_tensor(mix, 44100)
    for stem in ("vocals", "other"):
        err = (bf16[stem] - fp32[stem]).norm() / fp32[stem].norm()
        assert err < 0.05, (stem, float(err))
