"""Python API: tensors and files, resampling, channels, residual stems, safety."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import ConvModel, GainModel, noise, write_wav

from separator.errors import SeparatorError
from separator.inference import Separator
from separator.inference.engine import separate_tensor
from separator.inference.separator import output_paths
from separator.zoo import load_model as load_pretrained


def sine(frames: int, rate: int, channels: int = 2) -> np.ndarray:
    t = np.arange(frames) / rate
    x = np.stack([0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], 1)
    return x.astype(np.float32)


def test_tensor_at_model_rate_equals_engine():
    sep = Separator(ConvModel(), device="cpu", overlap=2, batch_size=2)
    x = torch.randn(2, 5555)
    out = sep.separate_tensor(x, 8000)
    ref = separate_tensor(ConvModel(), x, overlap=2, batch_size=2)
    assert list(out) == ["vocals", "drums", "bass", "other"]
    for s, name in enumerate(out):
        assert torch.equal(out[name], ref[s])


def test_file_streaming_equals_tensor_bit_for_bit(tmp_path):
    data = noise(2, 200_003)
    path = write_wav(tmp_path / "song.wav", data, 8000)
    sep = Separator(ConvModel(), device="cpu", batch_size=3)
    written = sep.separate_file(path, output_dir=tmp_path / "out", bits=32, clip="none")
    whole = sep.separate_tensor(torch.from_numpy(data.T.copy()), 8000)
    for name, p in written.items():
        got, rate = sf.read(p, dtype="float32")
        assert rate == 8000 and got.shape == (200_003, 2)
        assert np.array_equal(got.T, whole[name].numpy())


@pytest.mark.parametrize("rate", [44100, 22050, 11025, 48000])
def test_resampling_keeps_rate_and_length(tmp_path, rate):
    frames = rate * 2 + 17
    path = write_wav(tmp_path / "s.flac", sine(frames, rate), rate, subtype="PCM_24")
    sep = Separator(GainModel(), device="cpu")
    out = sep.separate_file(path, "vocals", output_dir=tmp_path, fmt="flac", bits=24)
    got, got_rate = sf.read(out["vocals"], dtype="float32")
    src, _ = sf.read(path, dtype="float32")
    assert got_rate == rate and got.shape == (frames, 2)
    middle = slice(rate // 10, -rate // 10)  # resampler filters ring at the very ends
    np.testing.assert_allclose(got[middle], 0.5 * src[middle], atol=2e-4)


def test_mono_in_mono_out_with_stereo_model(tmp_path):
    data = noise(1, 9000)
    path = write_wav(tmp_path / "m.wav", data, 8000)
    out = Separator(GainModel(), device="cpu").separate_file(path, "drums", output_dir=tmp_path,
                                                             bits=32)  # fmt: skip
    got, _ = sf.read(out["drums"], dtype="float32", always_2d=True)
    assert got.shape == (9000, 1)
    np.testing.assert_allclose(got, 0.25 * data, atol=1e-6)


def test_stereo_into_mono_model_stays_stereo():
    sep = Separator(GainModel(audio_channels=1), device="cpu")
    x = torch.randn(2, 3000)
    out = sep.separate_tensor(x, 8000, stems="bass")
    assert out["bass"].shape == (2, 3000)
    assert torch.allclose(out["bass"], 0.125 * x, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_residual_stems_add_up_to_the_mixture(tmp_path, rate):
    data = noise(2, 30_000, scale=0.2)
    path = write_wav(tmp_path / "mix.wav", data, rate)
    sep = Separator(ConvModel(), device="cpu")
    out = sep.separate_file(path, "vocals,instrumental,drums,no_drums", output_dir=tmp_path,
                            bits=32, clip="none")  # fmt: skip
    read = {k: sf.read(p, dtype="float32")[0] for k, p in out.items()}
    np.testing.assert_allclose(read["vocals"] + read["instrumental"], data, atol=1e-6, rtol=0)
    np.testing.assert_allclose(read["drums"] + read["no_drums"], data, atol=1e-6, rtol=0)
    assert np.abs(read["vocals"]).max() > 0.01  # not trivially zero


def test_unknown_stem_lists_available():
    sep = Separator(GainModel(), device="cpu")
    with pytest.raises(SeparatorError, match="unknown stem 'guitar'.*vocals, drums.*instrumental"):
        sep.separate_tensor(torch.randn(2, 100), 8000, stems="vocals,guitar")
    assert "no_bass" in sep.available_stems


def test_outputs_never_overwritten_without_force(tmp_path):
    path = write_wav(tmp_path / "a.wav", noise(2, 1000), 8000)
    sep = Separator(GainModel(), device="cpu")
    first = sep.separate_file(path, "vocals", output_dir=tmp_path / "o")["vocals"]
    stamp = first.read_bytes()
    with pytest.raises(SeparatorError, match="already exists.*`force=True`"):
        sep.separate_file(path, "vocals", output_dir=tmp_path / "o")
    assert first.read_bytes() == stamp
    sep.separate_file(path, "vocals", output_dir=tmp_path / "o", force=True, bits=16)
    assert sf.info(first).subtype == "PCM_16"


def test_unsafe_stem_names_and_templates(tmp_path):
    with pytest.raises(SeparatorError, match="not a safe file name"):
        Separator(GainModel(stems=("../evil", "b", "c", "d")), device="cpu")
    with pytest.raises(SeparatorError, match="outside"):
        output_paths(tmp_path / "a.wav", ["vocals"], tmp_path, "../{stem}.{ext}", "wav")
    with pytest.raises(SeparatorError, match="bad template"):
        output_paths(tmp_path / "a.wav", ["vocals"], tmp_path, "{song}/{stem}.{ext}", "wav")
    with pytest.raises(SeparatorError, match="overwrite each other"):
        output_paths(tmp_path / "a.wav", ["vocals", "drums"], tmp_path, "{track}.{ext}", "wav")
    got = output_paths(tmp_path / "x.stem.mp4", ["bass"], tmp_path, "{track}_{stem}.{ext}", "flac")
    assert got["bass"] == (tmp_path / "x_bass.flac").resolve()


def test_failure_mid_file_leaves_no_output(tmp_path):
    data = noise(2, 300_000)
    data[250_000, 0] = np.inf
    path = write_wav(tmp_path / "bad.wav", data, 8000)
    with pytest.raises(SeparatorError, match="bad.wav: contains NaN"):
        Separator(GainModel(), device="cpu").separate_file(path, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # no stems, no temporaries, no folders


def test_progress_reports_reach_the_total(tmp_path):
    path = write_wav(tmp_path / "a.wav", noise(2, 200_000), 8000)
    seen = []
    Separator(GainModel(), device="cpu").separate_file(
        path, "vocals", output_dir=tmp_path, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (200_000, 200_000)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_tta_and_precision_options():
    x = torch.randn(2, 2000)
    plain = Separator(GainModel(), device="cpu").separate_tensor(x, 8000)
    tta = Separator(GainModel(), device="cpu", tta=True).separate_tensor(x, 8000)
    assert all(torch.allclose(plain[k], tta[k], atol=1e-6) for k in plain)
    with pytest.raises(SeparatorError, match="fp16"):
        Separator(GainModel(), device="cpu", precision="fp16")
    bf16 = Separator(ConvModel(), device="cpu", precision="bf16").separate_tensor(x, 8000)
    ref = Separator(ConvModel(), device="cpu").separate_tensor(x, 8000)
    assert bf16["vocals"].dtype == torch.float32
    assert torch.allclose(bf16["vocals"], ref["vocals"], atol=0.05)


def test_bad_device_and_model_arguments(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(SeparatorError, match="no CUDA"):
            Separator(GainModel(), device="cuda")
    with pytest.raises(SeparatorError, match="unknown model 'nonexistent'.*yaml"):
        load_pretrained("nonexistent")
    with pytest.raises(SeparatorError, match="no such model file"):
        load_pretrained(tmp_path / "missing.ckpt")
    with pytest.raises(SeparatorError, match="lacks"):
        Separator(torch.nn.Linear(2, 2))


def test_interrupt_mid_file_leaves_no_output(tmp_path):
    calls = []

    class Interrupted(GainModel):
        def forward(self, x):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return super().forward(x)

    path = write_wav(tmp_path / "a.wav", noise(2, 20_000), 8000)
    with pytest.raises(KeyboardInterrupt):
        Separator(Interrupted(), device="cpu").separate_file(path, output_dir=tmp_path / "o")
    assert len(calls) == 3 and not (tmp_path / "o").exists()
