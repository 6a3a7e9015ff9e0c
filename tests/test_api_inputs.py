"""What the Python API takes: tensors or numpy arrays, integer PCM scaled as soundfile reads it,
whole positive sample rates; anything else is a clear `SeparatorError`. `Separator.separate_tensor`
and the engine's `separate_tensor` agree."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import GainModel, identity_model

from separator.errors import SeparatorError
from separator.inference import Separator, separate_tensor

RATE = 8000


def gain_separator() -> Separator:
    return Separator(GainModel(sample_rate=RATE, chunk_size=1000), device="cpu")


def pcm(dtype: str, frames: int = 3000) -> np.ndarray:
    """(2, frames) integer PCM spanning the dtype's whole range, extremes included."""
    info = np.iinfo(dtype)
    ramp = np.linspace(info.min, info.max, frames).round().astype(dtype)
    return np.stack([ramp, ramp[::-1]])


def test_numpy_arrays_give_what_tensors_give():
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3000)).astype(np.float32)
    sep = gain_separator()
    from_numpy = sep.separate_tensor(wav, RATE)
    from_torch = sep.separate_tensor(torch.from_numpy(wav), RATE)
    assert all(torch.equal(from_numpy[k], from_torch[k]) for k in from_torch)
    np.testing.assert_allclose(from_numpy["vocals"].numpy(), 0.5 * wav, atol=1e-6)
    mono = sep.separate_tensor(wav[0].astype(np.float64), RATE)["vocals"]  # (time,) float64
    assert mono.shape == (3000,) and mono.dtype == torch.float32
    engine_out = separate_tensor(identity_model(1000), wav)
    np.testing.assert_allclose(engine_out[0].numpy(), wav, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint8", "int8"])
def test_integer_pcm_is_scaled_as_soundfile_reads_it(tmp_path, dtype):
    data = pcm(dtype)
    # What soundfile gives for the same PCM samples written to a file: the reference scaling.
    subtype = {"int16": "PCM_16", "int32": "PCM_32", "uint8": "PCM_U8", "int8": "PCM_S8"}[dtype]
    fmt = "RAW" if dtype == "int8" else "WAV"  # WAV's 8-bit PCM is unsigned
    # soundfile writes int16/int32 arrays losslessly; 8-bit samples go in as their int16 value.
    wide = {"uint8": (data.astype(np.int16) - 128) * 256, "int8": data.astype(np.int16) * 256}
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, wide.get(dtype, data).T, RATE, subtype=subtype, format=fmt)
    raw = {"samplerate": RATE, "channels": 2, "subtype": subtype, "format": fmt}
    with sf.SoundFile(path, "r", **(raw if fmt == "RAW" else {})) as f:
        expected = f.read(dtype="float32").T
    assert expected.min() == -1.0  # full scale; the top (2^31 - 1) / 2^31 rounds to 1.0 in float32
    for wav in (data, torch.from_numpy(data)):
        out = separate_tensor(identity_model(1000), wav)  # identity: out = the scaled input
        np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6, rtol=0)
        vocals = gain_separator().separate_tensor(wav, RATE)["vocals"]
        np.testing.assert_allclose(vocals.numpy(), 0.5 * expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("wav", "message"),
    [
        ([[0.0] * 100] * 2, "`wav` must be a torch tensor or a numpy array, got list"),
        (np.zeros((2, 100), np.int64), "`wav`: dtype int64 is not audio"),
        (torch.zeros(2, 100, dtype=torch.bool), "`wav`: dtype bool is not audio"),
        (np.zeros((2, 100), np.complex64), "`wav`: dtype complex64 is not audio"),
        (np.full((2, 100), np.nan, np.float32), "`wav` contains NaN or infinite samples"),
    ],
    ids=["list", "int64", "bool", "complex", "nan"],
)
def test_other_inputs_are_refused_clearly(wav, message):
    with pytest.raises(SeparatorError) as e:
        gain_separator().separate_tensor(wav, RATE)
    assert message in str(e.value)
    with pytest.raises(SeparatorError, match="`mix`"):
        separate_tensor(identity_model(1000), wav)


@pytest.mark.parametrize("rate", [0, -44100, 44100.5, float("nan"), True, "44100"])
def test_bad_sample_rates_are_refused(rate):
    with pytest.raises(SeparatorError, match="`sample_rate` must be a positive whole number"):
        gain_separator().separate_tensor(torch.zeros(2, 1000), rate)


def test_whole_float_and_numpy_rates_are_taken():
    sep, wav = gain_separator(), torch.zeros(2, 1000)
    assert sep.separate_tensor(wav, 8000.0)["vocals"].shape == (2, 1000)
    assert sep.separate_tensor(wav, np.int64(16000))["vocals"].shape == (2, 1000)
