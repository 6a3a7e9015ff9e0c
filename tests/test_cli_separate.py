"""In-process `separate` runs on real audio files in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from tiny_models import GainModel, noise, write_wav

import separator.inference.api
from separator.cli import separate_main

RATE = 44100


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """About 4 s of real music (frames, 2) at 44.1 kHz from stempeg's example, or skip."""
    from stems_example import example_stems

    stems, rate = example_stems()
    assert rate == RATE
    return np.ascontiguousarray(stems["mixture"].T, dtype=np.float32)[: 4 * RATE]


@pytest.fixture
def fake_model(monkeypatch):
    """`--model fake.yaml` builds a GainModel (vocals = 0.5 * mix) at 44.1 kHz."""
    loaded = []

    def load(name, config=None, *, model_type=None, offline=None):
        loaded.append((str(name), config))
        if "missing" in str(name):
            raise separator.inference.api.SeparatorError(f"{name}: no such model file")
        return GainModel(sample_rate=RATE, chunk_size=RATE // 2)

    monkeypatch.setattr(separator.inference.api, "load_model", load)
    return loaded


def run(*argv) -> int:
    return separate_main([str(a) for a in argv])


def test_real_audio_wav_and_flac_with_residual(tmp_path, music, fake_model, capsys):
    wav = write_wav(tmp_path / "song.wav", music, RATE)
    flac = tmp_path / "other.flac"
    sf.write(flac, music[::2], RATE // 2, subtype="PCM_24")  # another rate and format
    out = tmp_path / "out"
    code = run(wav, flac, "--model", "fake.yaml", "--stems", "vocals,instrumental", "-o", out,
               "--bits", "32", "--clip", "none", "--overlap", "3", "--batch-size", "2")  # fmt: skip
    assert code == 0
    vocals, rate = sf.read(out / "fake" / "song" / "vocals.wav", dtype="float32")
    inst, _ = sf.read(out / "fake" / "song" / "instrumental.wav", dtype="float32")
    assert rate == RATE and vocals.shape == music.shape
    np.testing.assert_allclose(vocals, 0.5 * music, atol=1e-6)
    np.testing.assert_allclose(vocals + inst, music, atol=1e-6, rtol=0)
    v2, rate2 = sf.read(out / "fake" / "other" / "vocals.wav", dtype="float32")
    assert rate2 == RATE // 2 and v2.shape == music[::2].shape  # rate and length kept
    printed = capsys.readouterr().err
    assert "song.wav" in printed and "vocals, instrumental" in printed and "RTF" in printed


def test_format_bits_filename_and_folder_input(tmp_path, fake_model):
    folder = tmp_path / "in"
    folder.mkdir()
    write_wav(folder / "a.wav", noise(2, 5000), RATE)
    write_wav(folder / "b.wav", noise(1, 3000), RATE)
    (folder / "notes.txt").write_text("not audio")
    code = run(folder, "--model", "fake.yaml", "--stems", "drums", "-o", tmp_path / "o",
               "--format", "flac", "--bits", "16", "--filename", "{stem}-{track}.{ext}", "-q",
               "--jobs", "2")  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["drums-a.flac", "drums-b.flac"]
    info = sf.info(tmp_path / "o" / "drums-b.flac")
    assert (info.subtype, info.channels, info.frames) == ("PCM_16", 1, 3000)  # mono in, mono out


def test_bad_inputs_fail_alone_and_leave_nothing(tmp_path, fake_model, capsys):
    good = write_wav(tmp_path / "good.wav", noise(2, 4000), RATE)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "zero.wav", np.zeros((0, 2), np.float32), RATE)
    bad = noise(2, 100_000)
    bad[90_000] = np.nan
    write_wav(tmp_path / "nan.wav", bad, RATE)
    write_wav(tmp_path / "six.wav", noise(6, 1000), RATE)
    names = ["missing.wav", "corrupt.wav", "empty.wav", "zero.wav", "nan.wav", "six.wav"]
    out = tmp_path / "out"
    code = run(*[tmp_path / n for n in names], good, "--model", "fake.yaml", "-o", out)
    assert code == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == len(names)
    for name, line in zip(names, err_lines):
        assert name in line
    assert "Traceback" not in "".join(err_lines)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"fake/good/{s}.wav" for s in sorted(["vocals", "drums", "bass", "other"])]


def test_rerun_skips_existing_outputs_and_force_overwrites(tmp_path, fake_model, capsys):
    song = write_wav(tmp_path / "s.wav", noise(2, 3000), RATE)
    args = [song, "--model", "fake.yaml", "--stems", "bass", "-o", tmp_path / "o"]
    assert run(*args) == 0
    target = tmp_path / "o" / "fake" / "s" / "bass.wav"
    before = target.read_bytes()
    capsys.readouterr()
    assert run(*args, "--bits", "16") == 0  # a re-run skips what is there
    assert "s.wav: skipped (exists)" in capsys.readouterr().err and target.read_bytes() == before
    assert run(*args, "--bits", "16", "--force") == 0
    assert sf.info(target).subtype == "PCM_16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stems", "vocals,kazoo"], "unknown stem 'kazoo'; this model has: vocals, drums"),
        (["--format", "aiff"], "unknown --format 'aiff'"),
        (["--format", "flac", "--bits", "32"], "flac at 32 bits"),
        (["--overlap", "0.5"], "overlap must be"),
        (["--device", "tpu"], "unknown device"),
        (["--filename", "../{stem}.{ext}"], "outside"),
    ],
)
def test_option_errors_are_one_line(tmp_path, fake_model, capsys, args, message):
    song = write_wav(tmp_path / "s.wav", noise(2, 1000), RATE)
    assert run(song, "--model", "fake.yaml", "-o", tmp_path / "o", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_model_errors(tmp_path, capsys):
    song = write_wav(tmp_path / "s.wav", noise(2, 1000), RATE)
    assert run(song, "--model", "no-such-model") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'no-such-model'") and len(err.splitlines()) == 1
    assert run(song, "--model", tmp_path / "missing.ckpt", "--config", tmp_path / "c.yaml") == 2
    assert "missing.ckpt: no such model file" in capsys.readouterr().err


TINY_BS = {
    "dim": 16, "depth": 1, "stereo": True, "num_stems": 2, "heads": 2, "dim_head": 8,
    "stft_n_fft": 256, "stft_hop_length": 64, "stft_win_length": 256,
    "time_transformer_depth": 1, "freq_transformer_depth": 1,
    "freqs_per_bands": [2] * 8 + [4] * 8 + [8] * 4 + [16, 33],
}  # fmt: skip


def tiny_bs_files(folder, **changes):
    """A randomly initialised tiny BS-RoFormer: MSST YAML + .ckpt state dict in `folder`."""
    import torch
    import yaml

    from separator.zoo import load_model  # noqa: F401 - skip cleanly if absent

    cfg = {
        "audio": {"chunk_size": 8192, "sample_rate": RATE, "num_channels": 2},
        "model": {**TINY_BS, **changes},
        "training": {"instruments": ["vocals", "other"], "target_instrument": None},
    }
    config = folder / f"tiny{len(changes)}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    from separator.zoo import build_model, read_card

    torch.manual_seed(0)
    model = build_model(read_card(config))
    ckpt = folder / f"tiny{len(changes)}.ckpt"
    torch.save(model.state_dict(), ckpt)
    return config, ckpt


def test_tiny_bs_roformer_checkpoint_end_to_end(tmp_path, music):
    import torch

    from separator.inference import Separator
    from separator.inference.engine import separate_tensor

    config, ckpt = tiny_bs_files(tmp_path)
    song = write_wav(tmp_path / "song.wav", music[: 2 * RATE], RATE)
    out = tmp_path / "out"
    code = run(song, "--model", ckpt, "--config", config, "-o", out, "--stems", "vocals,no_vocals",
               "--bits", "32", "--clip", "none", "-q")  # fmt: skip
    assert code == 0
    vocals, rate = sf.read(out / "tiny0" / "song" / "vocals.wav", dtype="float32")
    rest, _ = sf.read(out / "tiny0" / "song" / "no_vocals.wav", dtype="float32")
    assert rate == RATE and vocals.shape == (2 * RATE, 2)
    np.testing.assert_allclose(vocals + rest, music[: 2 * RATE], atol=1e-6, rtol=0)
    sep = Separator.from_pretrained(ckpt, config=config, device="cpu")
    ref = separate_tensor(sep.model, torch.from_numpy(music[: 2 * RATE].T.copy()))
    assert np.array_equal(vocals.T, ref[0].numpy())  # CLI file == engine on the whole tensor


def test_config_checkpoint_mismatch_is_one_line(tmp_path, capsys):
    config, _ = tiny_bs_files(tmp_path, depth=2)
    _, ckpt = tiny_bs_files(tmp_path)
    song = write_wav(tmp_path / "s.wav", noise(2, 1000), RATE)
    assert run(song, "--model", ckpt, "--config", config, "-o", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "tiny0.ckpt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert run(song, "--model", ckpt, "-o", tmp_path / "o") == 2
    assert "pass --config" in capsys.readouterr().err
