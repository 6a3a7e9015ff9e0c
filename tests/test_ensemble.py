"""Ensembles: members' stems combined element-wise (avg, median) or per STFT bin (max/min_spec)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from separator.errors import SeparatorError
from separator.inference import Separator
from separator.inference.ensemble import Ensemble, _SpecCombiner
from tests.tiny_models import ConvModel, GainModel


def _members(*models):
    return [Separator(m, device="cpu", overlap=2) for m in models]


def _conv(seed: int, **kw) -> ConvModel:
    m = ConvModel(**kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g) * 0.1)
    return m


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    return torch.randn(2, 7777, generator=torch.Generator().manual_seed(1)) * 0.3


def test_average_is_elementwise_mean(wav) -> None:
    a, b = _members(_conv(1), _conv(2))
    ya, yb = a.separate_tensor(wav, 8000), b.separate_tensor(wav, 8000)
    ens = Ensemble([a, b]).separate_tensor(wav, 8000)
    assert set(ens) == set(ya)
    for stem in ya:
        np.testing.assert_allclose(ens[stem], (ya[stem] + yb[stem]) / 2, atol=1e-6)
        assert not torch.allclose(ya[stem], yb[stem], atol=1e-3)  # the members differ


def test_weighted_average_and_median(wav) -> None:
    members = _members(_conv(1), _conv(2), _conv(3))
    outs = [m.separate_tensor(wav, 8000) for m in members]
    avg = Ensemble(members, weights=[1, 0, 3]).separate_tensor(wav, 8000)
    med = Ensemble(members, method="median").separate_tensor(wav, 8000)
    for stem in outs[0]:
        np.testing.assert_allclose(avg[stem], (outs[0][stem] + 3 * outs[2][stem]) / 4, atol=1e-6)
        expected = torch.stack([o[stem] for o in outs]).median(dim=0).values
        np.testing.assert_allclose(med[stem], expected, atol=1e-6)


def test_stem_from_the_members_that_have_it(wav) -> None:
    four = GainModel(stems=("vocals", "drums", "bass", "other"), gains=(0.5, 0.2, 0.2, 0.1))
    two = GainModel(stems=("vocals", "other"), gains=(0.3, 0.7), chunk_size=700)
    ens = Ensemble(_members(four, two))
    assert ens.stems == ("vocals", "drums", "bass", "other")
    out = ens.separate_tensor(wav, 8000, stems="vocals,drums,instrumental")
    np.testing.assert_allclose(out["vocals"], 0.4 * wav, atol=1e-6)  # (0.5 + 0.3) / 2
    np.testing.assert_allclose(out["drums"], 0.2 * wav, atol=1e-6)  # only the 4-stem model
    np.testing.assert_allclose(out["instrumental"], 0.6 * wav, atol=1e-6)  # mixture - vocals
    only = Ensemble(_members(four, two), stem_models={"vocals": [1]})
    np.testing.assert_allclose(only.separate_tensor(wav, 8000)["vocals"], 0.3 * wav, atol=1e-6)


def test_members_at_other_rates_stay_aligned(tmp_path, wav) -> None:
    """A 16 kHz and an 8 kHz member on an 8 kHz file: outputs aligned sample for sample."""
    a = GainModel(sample_rate=16000, chunk_size=3000, gains=(1, 0, 0, 0))
    b = GainModel(sample_rate=8000, chunk_size=1000, gains=(1, 0, 0, 0))
    t = np.arange(7777) / 8000
    wav = torch.from_numpy(np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1234 * t)]))
    wav = (0.5 * wav).float()  # band-limited: resampling to 16 kHz and back keeps it
    path = tmp_path / "in.wav"
    sf.write(path, wav.numpy().T, 8000, subtype="FLOAT")
    written = Ensemble(_members(a, b)).separate_file(path, "vocals", output_dir=tmp_path / "out")
    got, rate = sf.read(written["vocals"], dtype="float32")
    assert rate == 8000 and got.shape == (wav.shape[1], 2)
    # both members are identities up to resampling, so their mean is the input
    assert np.abs(got.T - wav.numpy())[:, 100:-100].max() < 2e-3


@pytest.mark.parametrize("method", ["max_spec", "min_spec"])
def test_spectral_pick_of_identical_members_is_identity(method, wav) -> None:
    m = _conv(1)
    ref = _members(m)[0].separate_tensor(wav, 8000)
    out = Ensemble(_members(m, m), method=method).separate_tensor(wav, 8000)
    for stem in ref:
        np.testing.assert_allclose(out[stem], ref[stem], atol=1e-5)


def test_max_spec_picks_the_louder_member(wav) -> None:
    loud = GainModel(gains=(1.0, 0, 0, 0))
    quiet = GainModel(gains=(-0.5, 0, 0, 0))  # opposite sign: an average would be 0.25
    mx = Ensemble(_members(loud, quiet), method="max_spec").separate_tensor(wav, 8000)
    mn = Ensemble(_members(loud, quiet), method="min_spec").separate_tensor(wav, 8000)
    np.testing.assert_allclose(mx["vocals"], wav, atol=1e-5)
    np.testing.assert_allclose(mn["vocals"], -0.5 * wav, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=6), st.integers(1, 2))
def test_spec_combiner_streams_any_block_sizes(blocks, channels) -> None:
    """Any split of the input into blocks gives back the input (one member) at its length."""
    n = sum(blocks)
    x = np.random.default_rng(n).standard_normal((1, n, channels)).astype(np.float32)
    comb = _SpecCombiner("max_spec", channels)
    outs, start = [], 0
    for i, size in enumerate(blocks):
        last = i == len(blocks) - 1
        outs.append(comb.push(x[:, start : start + size], last=last))
        start += size
    y = np.concatenate(outs)
    assert y.shape == (n, channels)
    np.testing.assert_allclose(y, x[0], atol=1e-5)


def test_bad_ensembles_are_refused() -> None:
    a, b = _members(GainModel(), GainModel())
    with pytest.raises(SeparatorError, match="unknown ensemble method"):
        Ensemble([a, b], method="mean")
    with pytest.raises(SeparatorError, match="2 weights for 3 models|1 weights for 2"):
        Ensemble([a, b], weights=[1.0])
    with pytest.raises(SeparatorError, match="at least two"):
        Ensemble([a])
