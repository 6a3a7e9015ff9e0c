"""Shared test helpers. Tests run offline on the CPU and never write into the working tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest_plugins = ["tests.loopback"]  # the `server` and `cache` fixtures
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch):
    torch.manual_seed(0)
    # precision="auto" would time bf16 on CPUs that run it natively: fix it to fp32 so that golden
    # outputs hold on every machine (tests/test_precision.py lifts this to test the choice).
    monkeypatch.setenv("SEPARATOR_AUTO_PRECISION", "fp32")
    yield


@pytest.fixture(autouse=True)
def _fresh_offline_machine(tmp_path_factory, monkeypatch):
    """Every test runs as on a fresh machine without network: an empty weights cache, models
    folder and user config, no default-model override, SEPARATOR_OFFLINE=1 (the loopback
    `cache` fixture turns it off again), so no test reaches the internet or the user's files."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SEPARATOR_CACHE", str(home / "cache"))
    monkeypatch.setenv("SEPARATOR_MODELS", str(home / "models"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("SEPARATOR_OFFLINE", "1")
    monkeypatch.delenv("SEPARATOR_DEFAULT_MODEL", raising=False)
    yield


@pytest.fixture
def user_models(tmp_path, monkeypatch) -> Path:
    """An empty user models folder (SEPARATOR_MODELS) for cards a test writes."""
    folder = tmp_path / "user_models"
    folder.mkdir()
    monkeypatch.setenv("SEPARATOR_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One thread (`pytestmark = pytest.mark.usefixtures("one_thread")`): for small models, two
    threads running small LSTM/conv steps mostly wait for each other on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_golden(name: str):
    """(class name, config dict, state dict, input, output) of a golden file in fixtures/."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = FIXTURES / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    x, y = sd.pop("__input__"), sd.pop("__output__")
    return meta["class"], json.loads(meta["config"]), sd, x, y


@pytest.fixture(scope="session")
def stempeg_example() -> dict:
    """Real multitrack audio: stempeg's example (6 s, 44.1 kHz, stereo), decoded with ffmpeg.

    {"mixture", "drums", "bass", "other", "vocals"} -> (channels, frames) float32, or a skip.
    """
    import numpy as np
    from stems_example import example_stems

    stems, rate = example_stems()
    assert rate == 44100
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in stems.items()}


def write_musdb_folder(root: Path, tracks: dict[str, dict], subset: str = "train") -> Path:
    """Write {track name: {stem: (channels, frames)}} at 44.1 kHz as a MUSDB18HQ-layout folder."""
    from separator.datasets import write_track

    for name, stems in tracks.items():
        write_track(root / subset / name, stems, 44100)
    return root


@pytest.fixture(scope="session")
def musdb_example(stempeg_example, tmp_path_factory) -> Path:
    """A small MUSDB18HQ-layout folder made from the real stempeg stems
    (`separator.datasets.example_folder`): train/ holds two 3-second halves and the whole excerpt
    under the name of a musdb validation track; test/ the whole excerpt."""
    from separator.datasets import example_folder

    return example_folder(tmp_path_factory.mktemp("musdb18hq"))
