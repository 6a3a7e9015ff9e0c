"""Every MSST family end to end: `separate --model <card>` with a random-weight checkpoint served
from 127.0.0.1 (download, sha256, load, streaming) on a short real file; each family's rate, chunk
length and channels come from its config; Apollo's one output is the restored mixture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from separator.cli import separate_main
from separator.inference import Separator, load_separator
from separator.zoo import build_model, load_model, read_card
from separator.zoo.formats import save_state_dict
from tests import test_nn_apollo, test_nn_mdx23c, test_nn_scnet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread


def _scnet_mono_22k() -> dict:
    config = test_nn_scnet.tiny(audio_channels=1, dims=[2, 6, 8])
    config["audio"] = {"sample_rate": 22050, "chunk_size": 4096, "num_channels": 1}
    return config


def _mdx23c() -> dict:
    config = test_nn_mdx23c.tiny()
    config["audio"]["chunk_size"] = 8192
    return config


def _apollo() -> dict:
    config = test_nn_apollo.tiny()  # 16 kHz, mono
    config["audio"]["chunk_size"] = 3000
    return config


def _bandit(version: int) -> dict:
    """A tiny BandIt (v1: `model:`, 44.1 kHz) or BandIt v2 (`kwargs:`, 48 kHz, as its real
    config) with MSST's stem names, which the cards call dialog/effects."""
    small = dict(n_sqm_modules=1, emb_dim=8, rnn_dim=8, mlp_dim=8, n_bands=8)
    if version == 1:
        model = dict(in_channel=1, stems=["speech", "music"], band_specs="musical", **small)
        return {"model": model, "audio": {"sample_rate": 44100, "chunk_size": 8192},
                "training": {"instruments": ["speech", "music"]}}  # fmt: skip
    kwargs = dict(in_channels=1, stems=["speech", "sfx"], n_fft=512, win_length=512,
                  hop_length=128, **small)  # fmt: skip
    return {"cls": "Bandit", "kwargs": kwargs,
            "audio": {"sample_rate": 48000, "chunk_size": 9600, "num_channels": 2}}  # fmt: skip


def _roformer(conformer: bool = False, **options) -> dict:
    """A tiny one-stem stereo RoFormer-like MSST YAML (experimental / Conformer options)."""
    stack = "conformer" if conformer else "transformer"
    depths = {f"time_{stack}_depth": 1, f"freq_{stack}_depth": 1}
    stft = dict(stft_n_fft=256, stft_hop_length=64, stft_win_length=256)
    model = dict(dim=16, depth=2, heads=2, dim_head=8, stereo=True, num_stems=1,
                 **stft, **depths, **options)  # fmt: skip
    if "num_bands" not in options:
        model["freqs_per_bands"] = [2] * 8 + [4] * 8 + [8] * 4 + [16, 33]
    return {
        "model": model,
        "audio": {"sample_rate": 44100, "chunk_size": 8192},
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
    }


# family -> (MSST YAML, the stems the card has); a family merged later adds a line here.
CASES = {
    "bandit": (_bandit(1), ("dialog", "music")),
    "bandit_v2": (_bandit(2), ("dialog", "effects")),
    "bs_roformer": (_roformer(use_pope=True), ("vocals",)),  # PoPE; zero_dc on with it
    "mel_band_roformer": (_roformer(num_bands=16, zero_dc=True), ("vocals",)),
    "bs_roformer_experimental": (_roformer(use_value_residual_learning=True), ("vocals",)),
    "mel_band_roformer_experimental": (_roformer(num_bands=16), ("vocals",)),
    "bs_conformer": (_roformer(True, conv_kernel_size=7), ("vocals",)),
    "mel_band_conformer": (_roformer(True, num_bands=16, conv_kernel_size=7), ("vocals",)),
    "mdx23c": (_mdx23c(), ("vocals", "other")),
    "scnet": (test_nn_scnet.tiny(), ("vocals", "other")),
    "scnet_masked": (test_nn_scnet.tiny(), ("vocals", "other")),
    "scnet_tran": (_scnet_mono_22k(), ("vocals", "other")),
    "apollo": (_apollo(), ("restored",)),
}


@pytest.fixture
def song(tmp_path, stempeg_example) -> Path:
    """One second of stempeg's real mixture, as MP3 (read through the same decoder as a user's)."""
    path = tmp_path / "song.mp3"
    sf.write(path, stempeg_example["mixture"][:, :44100].T, 44100, format="MP3")
    return path


def publish(server, folder: Path, family: str, config: dict, seed: int = 0) -> str:
    """A card named `tiny_<family>` in the user's models folder whose random weights the loopback
    server serves (url, sha256, size); returns the card's name."""
    name = f"tiny_{family}"
    card = read_card(config, model_type=family)
    model = build_model(card)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = folder.parent / f"{name}.safetensors"
    save_state_dict(model, path)
    body = path.read_bytes()
    server.files[f"/m/{name}.safetensors"] = body
    data = card.to_dict() | {
        "name": name,
        "weights": {"url": server.url(f"/m/{name}.safetensors"), "size": len(body),
                    "sha256": hashlib.sha256(body).hexdigest()},
    }  # fmt: skip
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return name


@pytest.mark.parametrize("family", CASES)
def test_separate_by_name(family, server, cache, user_models, tmp_path, song):
    config, stems = CASES[family]
    name = publish(server, user_models, family, config)
    out = tmp_path / "out"
    argv = [str(song), "--model", name, "-o", str(out), "-q", "--bits", "32"]
    assert separate_main(argv) == 0
    written = sorted(p.name for p in (out / name / "song").iterdir())
    assert written == sorted(f"{s}.wav" for s in stems)  # Apollo: restored.wav only

    # the model the card describes, with the served bytes, rate/chunk/channels from its config
    cached = cache / name / f"{name}.safetensors"
    card = read_card(user_models / f"{name}.yaml")
    model = load_model(card, cached)
    audio = config["audio"]
    assert (model.sample_rate, model.chunk_size) == (audio["sample_rate"], audio["chunk_size"])
    assert model.audio_channels == audio.get("num_channels", 2)
    mix, rate = sf.read(song, dtype="float32")
    assert model.chunk_size * 4 < len(mix) * model.sample_rate / rate  # several chunks: streamed
    expected = Separator(model, device="cpu").separate_tensor(torch.from_numpy(mix.T.copy()), rate)
    for stem in stems:
        got = sf.read(out / name / "song" / f"{stem}.wav", dtype="float32")[0]
        assert got.shape == mix.shape  # the input's length and channels
        np.testing.assert_allclose(got, expected[stem].numpy().T, atol=1e-5)
        assert np.abs(got).max() > 1e-4  # the random model does produce output


def test_restoration_has_no_residual_stems(server, cache, user_models, tmp_path, song, capsys):
    name = publish(server, user_models, "apollo", CASES["apollo"][0])
    sep = load_separator(name, device="cpu")
    assert sep.available_stems == ["restored"] and not sep.residuals
    for stems in ("no_restored", "restored,instrumental"):
        rc = separate_main([str(song), "--model", name, "--stems", stems, "-o", str(tmp_path)])
        assert rc == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no residual stems" in err and "restored" in err
    with pytest.raises(Exception, match="no residual stems"):
        sep.separate_tensor(torch.zeros(2, 1000), 44100, stems="no_restored")


def test_separators_keep_their_residuals(server, cache, user_models):
    name = publish(server, user_models, "scnet", CASES["scnet"][0])
    sep = load_separator(name, device="cpu")
    assert sep.residuals and sep.available_stems == ["vocals", "other", "instrumental",
                                                     "no_vocals", "no_other"]  # fmt: skip


def test_every_msst_family_has_a_case():
    """The Demucs families (demucs, htdemucs) are the Demucs issue's: their own tests."""
    from separator.nn import FAMILIES

    msst = {n for n, f in FAMILIES.items() if f.checkpoint_format == "state_dict"}
    assert msst - {"htdemucs"} == set(CASES)
