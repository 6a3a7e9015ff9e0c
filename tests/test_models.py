"""The two RoFormers: exact reproduction of MSST golden outputs, band layouts, shapes, and the
batched band modules against a straightforward per-band reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_golden

from separator.errors import ConfigError
from separator.nn import FAMILIES, BSRoformer, MelBandRoformer
from separator.nn.bands import BandSplit, MaskEstimator, mel_band_matrix, stft_bins
from separator.nn.config import DEFAULT_FREQS_PER_BANDS

CLASSES = {"BSRoformer": BSRoformer, "MelBandRoformer": MelBandRoformer}
TINY = dict(
    dim=16,
    depth=1,
    heads=2,
    dim_head=8,
    stft_n_fft=256,
    stft_hop_length=64,
    stft_win_length=256,
    time_transformer_depth=1,
    freq_transformer_depth=1,
)
TINY_BANDS = (2,) * 8 + (4,) * 8 + (8,) * 4 + (16, 33)  # sums to 129 bins


@pytest.mark.parametrize("name", ["bs_small", "mel_small", "bs_mono"])
def test_golden_outputs_reproduced(name):
    cls_name, config, sd, x, y = load_golden(name)
    model = CLASSES[cls_name](**config).eval()
    model.load_state_dict(sd, strict=True)
    with torch.inference_mode():
        out = model(x)
    if y.dim() == 3:  # the oracle drops the stem axis of one-stem models
        y = y.unsqueeze(1)
    assert out.shape[:3] == y.shape[:3] and out.shape[-1] == x.shape[-1]
    # Mel's oracle output is floor(T/hop)*hop long; ours keeps the input length.
    torch.testing.assert_close(out[..., : y.shape[-1]], y, atol=1e-5, rtol=0)
    assert (out[..., : y.shape[-1]] - y).abs().max() < 1e-6  # in fact far tighter than asked


def test_golden_freqs_are_applied_as_stored():
    """The golden files hold perturbed rotary freqs; a model that ignored them would differ."""
    cls_name, config, sd, x, y = load_golden("bs_small")
    model = CLASSES[cls_name](**config).eval()
    sd = {k: (v * 1.5 if k.endswith("rotary_embed.freqs") else v) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    with torch.inference_mode():
        out = model(x)
    assert (out - y.unsqueeze(1)).abs().max() > 1e-4


def test_default_bs_bands_sum_to_bins():
    assert sum(DEFAULT_FREQS_PER_BANDS) == stft_bins(2048) == 1025
    assert len(DEFAULT_FREQS_PER_BANDS) == 62


def test_bs_bands_must_sum_to_bins():
    with pytest.raises(
        ConfigError, match="sum of model.freqs_per_bands is 128 but stft_n_fft=256 gives 129"
    ):
        BSRoformer(**TINY, freqs_per_bands=(64, 64))


@pytest.mark.parametrize(
    "sr,n_fft,bands",
    [
        (44100, 2048, 60),
        (44100, 2048, 64),
        (44100, 2048, 128),
        (48000, 2048, 60),
        (44100, 512, 16),
        (16000, 1024, 40),
    ],
)
def test_every_mel_bin_is_covered(sr, n_fft, bands):
    cover = mel_band_matrix(sr, n_fft, bands)
    assert cover.shape == (bands, n_fft // 2 + 1)
    assert cover.any(axis=0).all()
    assert cover[0, 0] and cover[-1, -1]
    # Bands are contiguous runs of bins and consecutive bands overlap or touch.
    for row in cover:
        idx = np.flatnonzero(row)
        assert (np.diff(idx) == 1).all()


def test_mel_counts_match_band_cover():
    model = MelBandRoformer(**TINY, num_bands=12, sample_rate=16000, stereo=True)
    cover = mel_band_matrix(16000, 256, 12)
    per_bin = torch.as_tensor(cover.sum(axis=0), dtype=torch.float32)
    assert torch.equal(model._band_count.view(-1, 2, 2)[:, 0, 0], per_bin)
    assert model._band_count.min() >= 1


@pytest.mark.parametrize("arch", ["bs", "mel"])
@pytest.mark.parametrize("stereo", [False, True])
@pytest.mark.parametrize("length", [1000, 4096, 4097])
def test_output_shape_keeps_length(arch, stereo, length):
    kw = dict(TINY, stereo=stereo, num_stems=3)
    model = (
        BSRoformer(**kw, freqs_per_bands=TINY_BANDS)
        if arch == "bs"
        else MelBandRoformer(**kw, num_bands=10, sample_rate=22050)
    ).eval()
    channels = 2 if stereo else 1
    x = torch.randn(2, channels, length)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 3, channels, length)
    assert torch.isfinite(y).all()
    # Items of a batch do not leak into each other.
    with torch.inference_mode():
        y1 = model(x[1:])
    torch.testing.assert_close(y[1:], y1, atol=1e-5, rtol=1e-4)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key model.dim_heads"):
        BSRoformer(**TINY, freqs_per_bands=TINY_BANDS, dim_heads=4)


def test_sage_attention_only_chose_a_kernel():
    """sage_attention (MSST 2025-01..2026-01) picked an attention kernel: same weights, same
    math. false is accepted silently; true builds the same model with a warning."""
    plain = BSRoformer(**TINY, freqs_per_bands=TINY_BANDS).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BSRoformer(**TINY, freqs_per_bands=TINY_BANDS, sage_attention=False)
    with pytest.warns(UserWarning, match="sage_attention=true .* standard attention kernel"):
        sage = BSRoformer(**TINY, freqs_per_bands=TINY_BANDS, sage_attention=True).eval()
    assert sage.config == plain.config
    sage.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, 1, 3000)
    with torch.inference_mode():
        assert torch.equal(sage(x), plain(x))


def test_registry_names():
    assert {"bs_roformer", "mel_band_roformer"} <= set(FAMILIES)


# --- batched band modules against a per-band loop, the way MSST computes them ---------------
def _reference_band_split(mod: BandSplit, x, index):
    outs = []
    for k, net in enumerate(mod.to_features):
        xk = x[..., index[k]]
        xk = F.normalize(xk, dim=-1) * xk.shape[-1] ** 0.5 * net[0].gamma
        outs.append(net[1](xk))
    return torch.stack(outs, dim=-2)


def _reference_mask(mod: MaskEstimator, x):
    return torch.cat([mlp(x[:, :, k]) for k, mlp in enumerate(mod.to_freqs)], dim=-1)


@pytest.mark.parametrize("widths", [(8, 8, 16, 16, 40, 44), (4, 52, 12, 12, 20, 8, 100, 96)])
def test_band_modules_equal_per_band_loop(widths):
    torch.manual_seed(1)
    index = [torch.randint(0, 300, (w,)) for w in widths]  # arbitrary, overlapping gathers
    split = BandSplit(24, widths, index)
    est = MaskEstimator(24, widths, n_linear=3, mlp_expansion_factor=2)
    for p in list(split.parameters()) + list(est.parameters()):
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 7, 300)
    torch.testing.assert_close(
        split(x), _reference_band_split(split, x, index), atol=2e-5, rtol=1e-5
    )
    h = torch.randn(2, 7, len(widths), 24)
    ours = est(h.permute(2, 0, 1, 3).reshape(len(widths), 14, 24)).view(2, 7, -1)
    torch.testing.assert_close(ours, _reference_mask(est, h), atol=2e-5, rtol=1e-5)
    # Gradients flow to the per-band parameters (training uses the same path).
    est(h.permute(2, 0, 1, 3).reshape(len(widths), 14, 24)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in est.parameters())


def test_weight_cache_follows_parameter_updates():
    widths = (8, 8, 12)
    est = MaskEstimator(8, widths, n_linear=2, mlp_expansion_factor=2).eval()
    h = torch.randn(3, 5, 8)
    with torch.inference_mode():
        a = est(h)
    with torch.no_grad():
        est.to_freqs[2][0][2].bias.add_(1.0)
    with torch.inference_mode():
        b = est(h)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, _reference_mask(est, h.permute(1, 0, 2).unsqueeze(0))[0])


def test_linear_attention_matches_xca_definition():
    """linear_transformer_depth > 0: cross-covariance attention in MSST's layout."""
    model = BSRoformer(**TINY, freqs_per_bands=TINY_BANDS, linear_transformer_depth=1).eval()
    keys = model.state_dict().keys()
    assert "layers.0.0.layers.0.0.temperature" in keys
    assert "layers.0.0.layers.0.0.to_qkv.0.weight" in keys
    assert "layers.0.0.layers.0.0.to_out.1.weight" in keys
    attn = model.layers[0][0].layers[0][0]
    torch.nn.init.normal_(attn.temperature, std=0.5)
    x = torch.randn(2, 11, 16)
    q, k, v = attn.to_qkv(attn.norm(x)).view(2, 11, 3, 2, 8).permute(2, 0, 3, 4, 1)  # b h d n
    q = F.normalize(q, dim=-1) * attn.temperature.exp()
    k = F.normalize(k, dim=-1)
    sim = torch.einsum("bhin,bhjn->bhij", q, k) * 8.0
    ref = torch.einsum("bhij,bhjn->bhin", sim.softmax(-1), v)
    ref = attn.to_out(ref.permute(0, 3, 1, 2).reshape(2, 11, 16))
    torch.testing.assert_close(attn(x), x + ref, atol=1e-5, rtol=1e-5)  # residual included
    with torch.inference_mode():
        assert model(torch.randn(1, 1, 2000)).shape == (1, 1, 1, 2000)


def test_skip_connection_changes_output_and_keeps_layout():
    kw = dict(TINY, depth=3, freqs_per_bands=TINY_BANDS)
    a, b = BSRoformer(**kw).eval(), BSRoformer(**kw, skip_connection=True).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 1, 3000)
    with torch.inference_mode():
        assert (a(x) - b(x)).abs().max() > 1e-4


def test_zero_dc_only_changes_lowest_frequencies():
    kw = dict(TINY, freqs_per_bands=TINY_BANDS)
    a, b = BSRoformer(**kw).eval(), BSRoformer(**kw, zero_dc=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 8192)
    with torch.inference_mode():
        diff = (a(x) - b(x))[0, 0, 0]
    assert diff.abs().max() > 1e-4
    # Removing bin 0 of each frame only removes content below ~2 bins (Hann main lobe).
    power = torch.fft.rfft(diff).abs().square()
    assert power[: 2 * 8192 // 256].sum() / power.sum() > 0.99


def test_gradient_checkpointing_gives_same_gradients():
    kw = dict(TINY, freqs_per_bands=TINY_BANDS)
    a, b = BSRoformer(**kw), BSRoformer(**kw, use_torch_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 2048)
    for m in (a, b):
        m.train()
        m(x).square().mean().backward()
    ga = a.band_split.to_features[0][1].weight.grad
    gb = b.band_split.to_features[0][1].weight.grad
    torch.testing.assert_close(ga, gb)
