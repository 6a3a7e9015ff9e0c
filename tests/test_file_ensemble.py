"""`separator ensemble`: already separated files combined as MSST's ensemble.py does, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from separator.cli import main
from separator.errors import SeparatorError
from separator.inference.file_ensemble import ensemble_files
from tests.test_ensemble_methods import _definition

RATE = 44100


def _write(path, x: np.ndarray, rate: int = RATE):
    sf.write(path, x.T, rate, subtype="FLOAT")
    return path


@pytest.fixture
def stems(tmp_path):
    """Three estimates of one stem (2, n), one of them shorter, as float WAV files."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 100_000)) * 0.2
    xs = [(base + 0.1 * rng.standard_normal(base.shape)).astype(np.float32) for _ in range(3)]
    xs[2] = xs[2][:, :90_000]
    paths = [_write(tmp_path / f"{i}.wav", x) for i, x in enumerate(xs)]
    padded = np.stack([np.pad(x, ((0, 0), (0, 100_000 - x.shape[1]))) for x in xs])
    return paths, padded


def _read(path) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == RATE
    return data.T


def test_weighted_average_over_padded_files(tmp_path, stems) -> None:
    paths, x = stems
    out = tmp_path / "avg.wav"
    rc = main(["ensemble", *map(str, paths), "-o", str(out), "--weights", "1,2,3"])
    assert rc == 0
    expected = np.tensordot(np.array([1, 2, 3]) / 6, x, axes=1)
    np.testing.assert_allclose(_read(out), expected, atol=1e-6)
    assert sf.info(out).subtype == "FLOAT"  # float WAV by default, as MSST writes


@pytest.mark.parametrize("method", ["max_fft", "median_fft", "min_wave"])
def test_methods_on_files_equal_their_definition(tmp_path, stems, method) -> None:
    paths, x = stems
    out = ensemble_files(paths, tmp_path / "o.wav", method=method)
    expected = _definition(method, x, np.ones(3))
    np.testing.assert_allclose(_read(out), expected, atol=2e-6)


def test_msst_names_flac_output_and_existing_files(tmp_path, stems, capsys) -> None:
    paths, x = stems
    out = tmp_path / "v.flac"
    assert main(["ensemble", *map(str, paths[:2]), "-o", str(out), "--type", "avg_wave"]) == 0
    assert sf.info(out).subtype == "PCM_24" and sf.info(out).frames == 100_000
    mean = x[:2].mean(0)
    mean = mean / max(1.0, np.abs(mean).max())  # integer output: rescaled if it would clip
    np.testing.assert_allclose(_read(out), mean, atol=2e-5)  # 24-bit rounding
    assert main(["ensemble", *map(str, paths[:2]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert main(["ensemble", *map(str, paths[:2]), "-o", str(out), "--force"]) == 0


def test_bad_inputs_are_one_line_errors_and_leave_nothing(tmp_path, stems, capsys) -> None:
    paths, x = stems
    other = _write(tmp_path / "48k.wav", x[0], 48000)
    out = tmp_path / "o.wav"
    assert main(["ensemble", str(paths[0]), str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "48000 Hz" in err and str(other) in err
    assert main(["ensemble", str(paths[0]), str(tmp_path / "gone.wav"), "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["ensemble", str(paths[0]), str(paths[1]), "-o", str(out), "--method", "x"]) == 2
    assert "unknown ensemble method" in capsys.readouterr().err
    with pytest.raises(SeparatorError, match="one weight per|2 weights for 3"):
        ensemble_files(paths, out, weights=[1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.wav", "1.wav", "2.wav", "48k.wav"]
