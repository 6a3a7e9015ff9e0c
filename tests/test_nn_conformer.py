"""MSST's band Conformers: golden outputs, the convolution module (BatchNorm folded in eval)
against MSST's layer sequence, training mode, and the Mel-Conformer's band edges."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from msst_golden import build_from_case, case_paths, check_golden

from separator.nn import FAMILIES
from separator.nn.bands import mel_band_matrix
from separator.nn.conformer import ConformerConvModule

FAMS = ("bs_conformer", "mel_band_conformer")
CASES = [(f, p) for f in FAMS for p in case_paths(f)]


@pytest.mark.parametrize("family,path", CASES, ids=[p.stem for _, p in CASES])
def test_golden_outputs_reproduced(family, path):
    assert check_golden(path, family) < 1e-6


def test_all_cases_present():
    assert len(CASES) == 4


def conv_reference(module: ConformerConvModule, x):
    """MSST's `ConformerConvModule.net`, layer by layer in channels-first layout."""
    net = module.net
    h = net[0](x).transpose(1, 2)
    h = torch.nn.functional.glu(net[2](h), dim=1)
    h = torch.nn.functional.silu(net[5](net[4](h)))
    return x + net[7](h).transpose(1, 2)


@pytest.mark.parametrize("kernel", [3, 7, 31])
def test_conv_module_equals_msst_sequence(kernel):
    torch.manual_seed(kernel)
    module = ConformerConvModule(12, expansion_factor=2, kernel_size=kernel).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.3)
        bn = module.net[5]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 20, 12)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), conv_reference(module, x), atol=1e-5, rtol=1e-5)


def test_conv_module_trains_with_batch_statistics():
    module = ConformerConvModule(8, kernel_size=5).train()
    x = torch.randn(4, 9, 8)
    out = module(x)
    torch.testing.assert_close(out, conv_reference(module, x), atol=1e-5, rtol=1e-5)
    assert module.net[5].num_batches_tracked.item() == 2  # both calls above updated the stats
    out.square().mean().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_batchnorm_buffers_are_loaded_and_used():
    path = case_paths("bs_conformer")[0]
    case, model = build_from_case(path, "bs_conformer")
    key = "layers.0.0.layers.0.conv.net.5.running_var"
    assert torch.equal(model.state_dict()[key], case.state[key])
    state = {k: v * 2 if k.endswith("running_mean") else v for k, v in case.state.items()}
    model.load_state_dict(state, strict=True)  # the folded weights must follow
    with torch.inference_mode():
        out = model(case.tensors["input"])
    assert (out - case.tensors["output"].unsqueeze(1)).abs().max() > 1e-5


@pytest.mark.parametrize("sr,n_fft,bands", [(44100, 2048, 60), (44100, 512, 16), (48000, 1024, 24)])
def test_mel_conformer_band_edges(sr, n_fft, bands):
    """MSST's MelBandConformer: corner bins take a quarter of their neighbour's weight."""
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=bands)
    cover = mel_band_matrix(sr, n_fft, bands, edges="neighbour")
    assert cover[0, 0] == (fb[0, 1] > 0) and cover[-1, -1] == (fb[-1, -2] > 0)
    assert np.array_equal(cover[:, 1:-1], fb[:, 1:-1] > 0)


def test_linear_transformer_keeps_width_factor_four():
    """MSST passes ff_mult to the conformer stacks only, not to the linear-attention one."""
    model = FAMILIES["bs_conformer"].build(
        dict(
            dim=8,
            depth=1,
            dim_head=8,
            heads=2,
            stft_n_fft=256,
            stft_hop_length=64,
            stft_win_length=256,
            freqs_per_bands=(2,) * 8 + (4,) * 8 + (8,) * 4 + (16, 33),
            linear_conformer_depth=1,
            ff_mult=2,
        ),
        sample_rate=44100,
        stems=["a"],
        chunk_size=4096,
    )
    state = model.state_dict()
    assert state["layers.0.0.layers.0.1.net.1.weight"].shape == (32, 8)
    assert state["layers.0.1.layers.0.ff1.ff.net.1.weight"].shape == (16, 8)
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 1, 3000)).shape == (1, 1, 1, 3000)
