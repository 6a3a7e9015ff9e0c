"""The ensemble methods against their definitions: MSST's `ensemble.py` (ccc011a) for min_wave,
max_wave and the *_fft methods, written out here with numpy and librosa; streaming in any blocks
gives the same samples."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from separator.inference import Separator
from separator.inference.combine import FFT_METHODS, SpecCombiner, combine_waves
from separator.inference.ensemble import Ensemble
from tests.tiny_models import ConvModel


def _definition(method: str, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """MSST's average_waveforms on (K, C, T) tracks: what each method means, not how we stream."""
    if method in ("min_wave", "max_wave"):
        mag = np.abs(x)
        pick = mag.argmin(0) if method == "min_wave" else mag.argmax(0)
        return np.take_along_axis(x, pick[None], 0)[0]
    spec = np.stack([[librosa.stft(ch, n_fft=2048, hop_length=1024) for ch in m] for m in x])
    if method == "avg_fft":
        out = np.tensordot(weights / weights.sum(), spec, axes=1)
    elif method == "median_fft":
        out = np.median(spec, axis=0)  # numpy's complex order: real part, then imaginary
    else:
        mag = np.abs(spec)
        pick = mag.argmin(0) if method == "min_fft" else mag.argmax(0)
        out = np.take_along_axis(spec, pick[None], 0)[0]
    return np.stack([librosa.istft(ch, hop_length=1024, length=x.shape[-1]) for ch in out])


def _members(k: int, n: int, seed: int) -> np.ndarray:
    """(K, C, T): K correlated estimates of one stem (a shared part plus member noise)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((2, n))
    return (base + 0.7 * rng.standard_normal((k, 2, n))).astype(np.float32) * 0.2


def _streamed(method: str, x: np.ndarray, weights, blocks: list[int]) -> np.ndarray:
    """Our combiner fed (K, n, C) blocks of the given sizes; returns (C, T)."""
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    if method in FFT_METHODS:
        comb, outs, start = SpecCombiner(method, x.shape[1], weights), [], 0
        for i, size in enumerate(blocks):
            last = i == len(blocks) - 1
            outs.append(comb.push(xt[:, start : start + size], last=last))
            start += size
        return np.concatenate(outs).T
    return combine_waves(method, xt, weights).T


@pytest.mark.parametrize("method", ["min_wave", "max_wave", *FFT_METHODS])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("n", [1500, 7777, 8192])
def test_method_equals_its_definition(method: str, k: int, n: int) -> None:
    x = _members(k, n, seed=k * n)
    weights = np.arange(1.0, k + 1.0)
    expected = _definition(method, x, weights)
    got = _streamed(method, x, weights, [n])
    assert got.shape == expected.shape == (2, n)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)
    assert np.abs(expected).max() > 0.1  # not a trivially silent comparison


@pytest.mark.parametrize("method", FFT_METHODS)
def test_fft_methods_stream_in_any_blocks(method: str) -> None:
    x = _members(3, 9000, seed=5)
    whole = _streamed(method, x, [1, 2, 3], [9000])
    for blocks in ([1, 2047, 3000, 3952], [1024] * 8 + [808], [4500, 0, 4500], [8999, 1]):
        np.testing.assert_allclose(_streamed(method, x, [1, 2, 3], blocks), whole, atol=1e-6)


def test_methods_pick_and_weigh_as_defined() -> None:
    """Small cases by hand: the louder / quieter member, and weights only where they apply."""
    a = np.full((1, 4096, 1), 0.5, np.float32)
    b = np.full((1, 4096, 1), -0.25, np.float32)
    x = np.concatenate([a, b])
    assert np.allclose(combine_waves("max_wave", x, [1, 1]), 0.5)
    assert np.allclose(combine_waves("min_wave", x, [1, 1]), -0.25)
    assert np.allclose(combine_waves("min_wave", x, [0, 9]), -0.25)  # weights ignored
    out = SpecCombiner("avg_fft", 1, [1, 3]).push(x, last=True)
    assert np.allclose(out, (0.5 - 3 * 0.25) / 4, atol=1e-6)  # the STFT is linear
    out = SpecCombiner("max_fft", 1).push(x, last=True)
    assert np.allclose(out, 0.5, atol=1e-6)


def _conv(seed: int) -> ConvModel:
    m = ConvModel()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g) * 0.1)
    return m


@pytest.mark.parametrize("method", ["min_wave", "max_wave", "avg_fft", "median_fft"])
def test_model_ensemble_applies_the_method_to_member_outputs(method: str) -> None:
    wav = torch.randn(2, 6001, generator=torch.Generator().manual_seed(3)) * 0.3
    members = [Separator(_conv(s), device="cpu", overlap=2) for s in (1, 2, 3)]
    outs = [m.separate_tensor(wav, 8000) for m in members]
    ens = Ensemble(members, method=method, weights=[1, 2, 1]).separate_tensor(wav, 8000)
    for stem in outs[0]:
        x = np.stack([o[stem].numpy() for o in outs])
        expected = _definition(method, x, np.array([1.0, 2.0, 1.0]))
        np.testing.assert_allclose(ens[stem].numpy(), expected, atol=1e-5, rtol=0)
