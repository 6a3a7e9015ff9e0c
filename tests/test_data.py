"""Training data: MUSDB18HQ folders, the standard split, random mixes and their augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
from conftest import write_musdb_folder

from separator.datasets import MUSDB_VALIDATION, find_tracks
from separator.errors import SeparatorError
from separator.training.data import Augment, RandomMixDataset, peaking_sos

STEMS = ("vocals", "drums", "bass", "other")


def _tone(seconds: float, freq: float, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * 44100)) / 44100
    x = 0.1 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x][:channels])


def _song(seconds: float = 2.0) -> dict:
    return {s: _tone(seconds, 110 * (i + 1)) for i, s in enumerate(STEMS)}


def test_split_follows_musdb(tmp_path):
    names = ["Some Band - Train Song", MUSDB_VALIDATION[0], MUSDB_VALIDATION[5]]
    write_musdb_folder(tmp_path, {n: _song(0.5) for n in names})
    assert [t.name for t in find_tracks(tmp_path, split="train")] == ["Some Band - Train Song"]
    valid = [t.name for t in find_tracks(tmp_path, split="valid")]
    assert valid == sorted([MUSDB_VALIDATION[0], MUSDB_VALIDATION[5]])
    assert len(find_tracks(tmp_path, split=None)) == 3
    assert len(MUSDB_VALIDATION) == 14


def test_clear_errors(tmp_path):
    with pytest.raises(SeparatorError, match="no such folder"):
        find_tracks(tmp_path / "nothing")
    (tmp_path / "train").mkdir()
    with pytest.raises(SeparatorError, match="no tracks found"):
        find_tracks(tmp_path)
    song = _song()
    del song["bass"]
    write_musdb_folder(tmp_path, {"A": song})
    with pytest.raises(SeparatorError, match=r"A: missing stem 'bass'"):
        find_tracks(tmp_path)
    song = _song()
    song["bass"] = song["bass"][:, :-10]
    write_musdb_folder(tmp_path, {"A": song})
    with pytest.raises(SeparatorError, match="bass.wav: 88190 samples, the other stems have 88200"):
        find_tracks(tmp_path)
    sf.write(tmp_path / "train" / "A" / "bass.wav", _song()["bass"].T, 22050)
    with pytest.raises(SeparatorError, match="bass.wav: sample rate 22050 differs from 44100"):
        find_tracks(tmp_path)


def _dataset(root: Path, **kw) -> RandomMixDataset:
    tracks = find_tracks(root, split=None)
    args = dict(tracks=tracks, stems=STEMS, targets=STEMS, chunk_size=4410, length=100, seed=3)
    args.update(kw)
    return RandomMixDataset(**args)


def test_random_mix_is_deterministic_and_sums(tmp_path):
    write_musdb_folder(tmp_path, {"A": _song(), "B": _song(3.0)})
    ds = _dataset(tmp_path)
    mix, stems = ds[7]
    assert mix.shape == (2, 4410) and stems.shape == (4, 2, 4410)
    torch.testing.assert_close(mix, stems.sum(0))
    again = _dataset(tmp_path)[7]
    assert torch.equal(again[0], mix) and torch.equal(again[1], stems)
    assert not torch.equal(_dataset(tmp_path, seed=4)[7][0], mix)
    assert not torch.equal(ds[8][0], mix)


def test_one_target_keeps_the_full_mixture(tmp_path):
    write_musdb_folder(tmp_path, {"A": _song()})
    full = _dataset(tmp_path)[5]
    vocals = _dataset(tmp_path, targets=("vocals",))[5]
    assert torch.equal(vocals[0], full[0])  # the mixture still has every stem
    assert torch.equal(vocals[1][0], full[1][0])


def test_augmentations(tmp_path):
    write_musdb_folder(tmp_path, {"A": _song()})
    plain = _dataset(tmp_path, augment=Augment(gain_db=(0, 0), channel_swap=0, polarity=0))
    _, stems = plain[1]
    # Without augmentation the stems are excerpts of the files: right channel = half the left.
    torch.testing.assert_close(stems[:, 1], 0.5 * stems[:, 0])
    swapped = _dataset(tmp_path, augment=Augment(gain_db=(0, 0), channel_swap=1, polarity=0))[1][1]
    torch.testing.assert_close(swapped[:, 0], 0.5 * swapped[:, 1])
    flipped = _dataset(tmp_path, augment=Augment(gain_db=(0, 0), channel_swap=0, polarity=1))[1][1]
    torch.testing.assert_close(flipped, -stems)
    gained = _dataset(tmp_path, augment=Augment(gain_db=(6, 6), channel_swap=0, polarity=0))[1][1]
    torch.testing.assert_close(gained, stems * 10 ** (6 / 20), rtol=1e-5, atol=1e-7)
    dropped = _dataset(tmp_path, augment=Augment(drop_stem=1.0))[1]
    assert dropped[0].abs().max() == 0 and dropped[1].abs().max() == 0


def test_peaking_eq_has_its_gain_at_its_frequency_and_none_far_away():
    rate, t = 44100, np.arange(44100) / 44100
    sos = peaking_sos(1000.0, 9.0, 1.0, rate)
    for freq, want_db in ((1000.0, 9.0), (40.0, 0.0), (16000.0, 0.0)):
        y = scipy.signal.sosfilt(sos, np.sin(2 * np.pi * freq * t))[rate // 2 :]  # steady state
        got_db = 20 * np.log10(np.sqrt(2 * np.mean(y**2)))
        assert abs(got_db - want_db) < 0.25, (freq, got_db)


def test_timbre_augmentations(tmp_path):
    write_musdb_folder(tmp_path, {"A": _song()})
    off = dict(gain_db=(0, 0), channel_swap=0, polarity=0)
    plain = _dataset(tmp_path, augment=Augment(**off))[1][1]
    # A 0 dB EQ is the identity; the same draws with ±9 dB change every stem's spectrum.
    flat = _dataset(tmp_path, augment=Augment(**off, eq=1.0, eq_db=0.0))[1][1]
    torch.testing.assert_close(flat, plain, rtol=1e-5, atol=1e-6)
    eq_mix, eq = _dataset(tmp_path, augment=Augment(**off, eq=1.0, eq_db=9.0))[1]
    assert all((eq[i] - plain[i]).abs().max() > 1e-3 * plain[i].abs().max() for i in range(4))
    torch.testing.assert_close(eq_mix, eq.sum(0))  # the mixture is still the sum of the targets
    # Saturation keeps each stem's RMS and lowers its crest factor (peak / RMS).
    dist = _dataset(tmp_path, augment=Augment(**off, distortion=1.0))[1][1]
    for i in range(4):
        rms, rms_d = plain[i].pow(2).mean().sqrt(), dist[i].pow(2).mean().sqrt()
        torch.testing.assert_close(rms_d, rms, rtol=1e-4, atol=1e-7)
        assert dist[i].abs().max() / rms_d < plain[i].abs().max() / rms


def test_min_mean_abs_skips_silence(tmp_path):
    loud = _song()
    quiet = {s: np.zeros_like(v) for s, v in loud.items()}
    write_musdb_folder(tmp_path, {"loud": loud, "quiet": quiet})
    ds = _dataset(tmp_path, min_mean_abs=1e-3, augment=Augment(gain_db=(0, 0)))
    energies = [float(ds[i][1].abs().mean(dim=(1, 2)).min()) for i in range(12)]
    assert min(energies) > 1e-3


def test_real_stems_load(musdb_example):
    (track,) = find_tracks(musdb_example, subset="test", with_mixture=True)
    refs = np.stack([track.read(s) for s in STEMS])
    mix = track.mixture(STEMS)
    assert refs.shape[:2] == (4, 2) and mix.shape == refs.shape[1:]
    # The .stem.mp4 mixture is its own AAC stream: close to, not equal to, the sum of the stems.
    err = np.abs(mix - refs.sum(0)).mean() / np.abs(mix).mean()
    assert err < 0.1
