"""A WAV cut off mid-file is read with a warning naming the file and both lengths."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
from tiny_models import GainModel, noise

from separator.cli import separate_main
from separator.inference import Separator
from separator.inference.audio import TruncatedAudioWarning, open_audio

RATE = 8000


def truncated_wav(tmp_path, frames: int = 2 * RATE, keep: float = 0.5):
    full = tmp_path / "full.wav"
    sf.write(full, noise(2, frames), RATE, subtype="PCM_16")  # 4 bytes a frame, 44-byte header
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + int(frames * keep) * 4 + 3])  # and a partial frame
    return cut


def test_truncated_wav_warns_and_separates_what_is_there(tmp_path):
    cut = truncated_wav(tmp_path)
    with pytest.warns(TruncatedAudioWarning) as caught:
        paths = Separator(GainModel(), device="cpu").separate_file(cut, output_dir=tmp_path / "o")
    assert str(caught[0].message) == (
        f"{cut}: truncated: the header announces 16000 frames (2.00 s) but the file holds 8000 "
        "(1.00 s); reading the samples that are there"
    )
    assert sf.info(paths["vocals"]).frames == 8000


def test_whole_and_piped_wavs_do_not_warn(tmp_path, recwarn):
    full = tmp_path / "full.wav"
    sf.write(full, noise(2, RATE), RATE, subtype="PCM_16")
    open_audio(full)
    try:  # a WAV written to a pipe has an unknown length (0xFFFFFFFF) in its header
        piped = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(full), "-f", "wav", "-"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        piped = None
    if piped is not None:
        (tmp_path / "piped.wav").write_bytes(piped)
        assert open_audio(tmp_path / "piped.wav").frames == RATE
    assert not [w for w in recwarn if issubclass(w.category, TruncatedAudioWarning)]


def test_cli_shows_the_warning_and_succeeds(tmp_path, monkeypatch):
    import separator.inference.api

    monkeypatch.setattr(separator.inference.api, "load_model", lambda *a, **k: GainModel())
    cut = truncated_wav(tmp_path)
    with pytest.warns(TruncatedAudioWarning, match="cut.wav: truncated"):
        code = separate_main([str(cut), "--model", "x.yaml", "-o", str(tmp_path / "o"), "-q",
                              "--filename", "{track}/{stem}.{ext}"])  # fmt: skip
    assert code == 0
    assert np.isclose(sf.info(tmp_path / "o" / "cut" / "vocals.wav").duration, 1.0)
