"""MSST's experimental RoFormers: golden outputs, the residual quirk from layer 1 on, and
hyper-connections against the package's definition (hyper-connections 0.1.11)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from msst_golden import case_paths, check_golden

from separator.nn import FAMILIES
from separator.nn.experimental import HyperConnection
from separator.nn.layers import FeedForward

FAMS = ("bs_roformer_experimental", "mel_band_roformer_experimental")
CASES = [(f, p) for f in FAMS for p in case_paths(f)]
TINY = dict(
    dim=16,
    heads=2,
    dim_head=8,
    stft_n_fft=256,
    stft_hop_length=64,
    stft_win_length=256,
    time_transformer_depth=1,
    freq_transformer_depth=1,
    freqs_per_bands=(2,) * 8 + (4,) * 8 + (8,) * 4 + (16, 33),
)


@pytest.mark.parametrize("family,path", CASES, ids=[p.stem for _, p in CASES])
def test_golden_outputs_reproduced(family, path):
    assert check_golden(path, family) < 1e-6


def test_all_cases_present():
    assert len(CASES) == 4


def build(family: str, **model):
    fam = FAMILIES[family]
    return fam.build(model, sample_rate=44100, stems=["a"], chunk_size=8192).eval()


def test_depth_one_equals_bs_roformer_without_zero_dc():
    """With one layer no value residual is ever passed, so MSST's residual path is used."""
    x = torch.randn(1, 1, 4000)
    ref = build("bs_roformer", depth=1, **TINY)
    ours = build("bs_roformer_experimental", depth=1, **TINY)
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("vrl", [False, True])
def test_layers_after_the_first_add_no_residuals(vrl):
    """MSST ccc011a: from layer 1 on the blocks drop their residual adds, with or without value
    residual learning; so a 2-layer model is not bs_roformer even with the same weights."""
    x = torch.randn(1, 1, 4000)
    ref = build("bs_roformer", depth=2, **TINY)
    ours = build("bs_roformer_experimental", depth=2, use_value_residual_learning=vrl, **TINY)
    state = ref.state_dict()
    if vrl:  # layer 1's mix starts at sigmoid(0) = 1/2: give it our fresh init
        state.update({k: v for k, v in ours.state_dict().items() if "value_residual_mix" in k})
    ours.load_state_dict(state, strict=True)
    with torch.inference_mode():
        assert (ours(x) - ref(x)).abs().max() > 1e-3
        # Layer 1 by hand: its transformers return branch(x) with no residual.
        block = ours.layers[1][0]
        h = torch.randn(3, 5, 16)
        v0 = torch.randn(3, 5, 2, 8)
        y, _ = block.layers[0][0].plain(h, None, v0)
        out, _ = block(h, None, v0)
        torch.testing.assert_close(out, block.layers[0][1].plain(y))


def hc_reference(hc: HyperConnection, x, branch):
    """hyper-connections 0.1.11 `HyperConnections.forward`, written out: full alpha, mixed
    residual streams computed (and discarded, as the package does)."""
    s = hc.streams
    r = x.view(x.shape[0] // s, s, *x.shape[1:]).movedim(1, -2)  # (b, n, s, d)
    normed = F.normalize(r, dim=-1) * r.shape[-1] ** 0.5 * (hc.norm.gamma + 1)
    alpha = torch.tanh(normed @ hc.dynamic_alpha_fn) * hc.dynamic_alpha_scale + hc.static_alpha
    beta = torch.tanh(normed @ hc.dynamic_beta_fn) * hc.dynamic_beta_scale + hc.static_beta
    mix = torch.einsum("...st,...sd->...td", alpha, r)
    y = branch(mix[..., 0, :])
    out = torch.einsum("b...d,b...s->b...sd", y, beta).movedim(-2, 1).reshape(x.shape)
    return x + out


@pytest.mark.parametrize("streams", [2, 4])
def test_hyper_connection_matches_package_definition(streams):
    torch.manual_seed(3)
    ff = FeedForward(12, mult=2).eval()
    hc = HyperConnection(streams, 12, ff)
    for p in hc.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(3 * streams, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(hc.plain(x), hc_reference(hc, x, ff.plain), atol=1e-5, rtol=1e-5)
    # Streams are consecutive rows of the packed axis: rows of another group do not interact.
    with torch.no_grad():
        a = hc.plain(x)
        x2 = x.clone()
        x2[streams:] += 1.0
        assert torch.equal(hc.plain(x2)[:streams], a[:streams])


def test_training_step_reaches_every_used_parameter():
    model = build(
        "bs_roformer_experimental",
        depth=2,
        use_value_residual_learning=True,
        num_residual_streams=2,
        use_torch_checkpoint=True,
        **TINY,
    ).train()
    with torch.no_grad():  # at init the dynamic weights are 0, which zeroes some gradients
        for name, p in model.named_parameters():
            if "dynamic" in name or "norm.gamma" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model(torch.randn(2, 1, 3000)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    # hyper-connections 0.1.11 discards the mixed residuals: alpha columns 1.. get no gradient,
    # nor do the rotary freqs (a frozen parameter).
    assert all("static_alpha" in n or "dynamic_alpha_fn" in n or "freqs" in n for n in missing)
    hc = model.layers[0][0].layers[0][0]
    assert hc.static_alpha.grad[:, 0].abs().sum() > 0 and not hc.static_alpha.grad[:, 1:].any()
