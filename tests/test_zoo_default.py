"""End to end on random-weight models served from 127.0.0.1: the default model when online,
offline, cached, unreachable or overridden; ensemble presets with the new methods; chains."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from separator.cli import separate_main
from separator.inference import Separator
from separator.zoo import build_model, load_model, read_card
from separator.zoo.defaults import choose_default, strongest_four_stem
from separator.zoo.formats import save_state_dict
from tests.loopback import Server
from tests.test_checkpoints import MSST_BS_YAML

FOUR = ["drums", "bass", "other", "vocals"]


@pytest.fixture
def song(tmp_path, stempeg_example) -> Path:
    path = tmp_path / "song.wav"
    sf.write(path, stempeg_example["mixture"][:, :44100].T, 44100, subtype="FLOAT")
    return path


def _weights(tmp_path: Path, seed: int, stems: list[str]) -> tuple[dict, bytes]:
    """A tiny BS-RoFormer (random weights) with `stems`: its model section and safetensors."""
    data = yaml.load(MSST_BS_YAML, Loader=yaml.Loader)
    data["model"]["num_stems"] = len(stems)
    data["training"] = {"instruments": stems, "target_instrument": None}
    card = read_card(data)
    model = build_model(card)
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / f"w{seed}.safetensors"
    save_state_dict(model, path)
    return dict(card.model), path.read_bytes()


def _publish(server: Server, folder: Path, name: str, tmp_path: Path, seed: int, stems, **extra):
    """Serve a random-weight card `name` from `server` and write its card into `folder`."""
    model, body = _weights(tmp_path, seed, list(stems))
    server.files[f"/m/{name}.safetensors"] = body
    weights = {"urls": [server.url(f"/m/{name}.safetensors")]}
    if extra.pop("sha", True):
        weights["sha256"] = hashlib.sha256(body).hexdigest()
    card = {"name": name, "architecture": "bs_roformer", "model": model, "stems": list(stems),
            "sample_rate": 44100, "chunk_size": 44100, "weights": weights, **extra}  # fmt: skip
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return body


def _read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def _run(song: Path, out: Path, *extra) -> int:
    return separate_main([str(song), "-o", str(out), "--bits", "32", "--clip", "none",
                          "--filename", "{track}/{stem}.{ext}", *extra])  # fmt: skip


# --- the default model ------------------------------------------------------------------------


def test_default_online_downloads_then_uses_the_cache(
    server, cache, user_models, tmp_path, song, capsys
) -> None:
    body = _publish(server, user_models, "tiny_four", tmp_path, 1, FOUR,
                    sdr={"benchmark": "loopback", "average": 99.0})  # fmt: skip
    _publish(
        server,
        user_models,
        "tiny_unpinned",
        tmp_path,
        2,
        FOUR,
        sha=False,
        sdr={"benchmark": "loopback", "average": 100.0},
    )  # no sha256: never the default
    _publish(server, user_models, "tiny_no_sdr", tmp_path, 3, FOUR)  # no reported SDR: never
    assert strongest_four_stem().name == "tiny_four"
    assert _run(song, tmp_path / "a") == 0
    err = capsys.readouterr().err
    assert "model: tiny_four" in err and "strongest 4-stem" in err and "downloading" in err
    assert (cache / "tiny_four" / "tiny_four.safetensors").read_bytes() == body
    direct = Separator(load_model("tiny_four"), device="cpu")
    wav = torch.from_numpy(_read(song).T.copy())
    expected = direct.separate_tensor(wav, 44100)
    for stem in FOUR:
        got = _read(tmp_path / "a" / "song" / f"{stem}.wav")
        np.testing.assert_allclose(got, expected[stem].numpy().T, atol=1e-5)
    requests = len(server.requests)
    assert _run(song, tmp_path / "b", "--offline") == 0  # cached: used offline, no request
    err = capsys.readouterr().err
    assert "model: tiny_four" in err and "downloading" not in err
    assert len(server.requests) == requests


def test_default_offline_or_unreachable_uses_the_embedded_model(
    cache, user_models, tmp_path, song, capsys
) -> None:
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = Server()
    closed.base = f"http://127.0.0.1:{port}"
    _publish(closed, user_models, "tiny_four", tmp_path, 1, FOUR,
             sdr={"benchmark": "loopback", "average": 99.0})  # fmt: skip
    assert _run(song, tmp_path / "off", "--offline", "--stems", "vocals") == 0
    err = capsys.readouterr().err
    line = err.splitlines()[0]  # one line says which model ran and why (-q silences it)
    assert "separator_default (embedded)" in line and "offline" in line and "tiny_four" in line
    assert (tmp_path / "off" / "song" / "vocals.wav").is_file()
    choice = choose_default()  # online (the cache fixture), but no host answers
    assert choice.fallback and "unreachable" in choice.reason
    assert _run(song, tmp_path / "q", "-q", "--offline", "--stems", "vocals") == 0
    assert capsys.readouterr().err == ""


def test_default_falls_back_when_the_download_fails(
    server, cache, user_models, tmp_path, song, capsys
) -> None:
    _publish(server, user_models, "tiny_four", tmp_path, 1, FOUR,
             sdr={"benchmark": "loopback", "average": 99.0})  # fmt: skip
    server.files.clear()  # the host answers, but with 404
    assert _run(song, tmp_path / "o", "--stems", "drums") == 0
    err = capsys.readouterr().err
    assert "separator_default (embedded)" in err and "could not be downloaded" in err
    assert "404" in err


def test_env_and_config_file_override_the_choice(
    server, cache, user_models, tmp_path, song, monkeypatch, capsys
) -> None:
    for i, name in enumerate(("tiny_env", "tiny_cfg")):
        _publish(server, user_models, name, tmp_path, 4 + i, ["vocals", "other"])
    config = tmp_path / "xdg" / "separator" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("default_model: tiny_cfg\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert choose_default().name == "tiny_cfg"
    monkeypatch.setenv("SEPARATOR_DEFAULT_MODEL", "tiny_env")  # the environment wins
    assert _run(song, tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "model: tiny_env (the default set by SEPARATOR_DEFAULT_MODEL)" in err
    assert sorted(p.name for p in (tmp_path / "o" / "song").iterdir()) == [
        "other.wav", "vocals.wav"
    ]  # fmt: skip
    config.write_text("default_model: [1, 2]\n")
    monkeypatch.delenv("SEPARATOR_DEFAULT_MODEL")
    assert _run(song, tmp_path / "p") == 2
    assert "default_model" in capsys.readouterr().err


# --- presets and chains -----------------------------------------------------------------------


def test_preset_card_with_an_fft_method(server, cache, user_models, tmp_path, song) -> None:
    for i, name in enumerate(("tiny_a", "tiny_b")):
        _publish(server, user_models, name, tmp_path, 10 + i, ["vocals"])
    preset = {"name": "tiny_preset", "ensemble": {"models": ["tiny_a", "tiny_b"],
              "method": "max_fft"}}  # fmt: skip
    (user_models / "tiny_preset.yaml").write_text(yaml.safe_dump(preset))
    outs = {}
    for model in ("tiny_a", "tiny_b", "tiny_preset"):
        assert _run(song, tmp_path / model, "--model", model, "-q") == 0
        outs[model] = _read(tmp_path / model / "song" / "vocals.wav").T
    from tests.test_ensemble_methods import _definition

    expected = _definition("max_fft", np.stack([outs["tiny_a"], outs["tiny_b"]]), np.ones(2))
    np.testing.assert_allclose(outs["tiny_preset"], expected, atol=2e-5)


def test_chain_from_the_command_line_and_a_chain_card(
    server, cache, user_models, tmp_path, song
) -> None:
    _publish(server, user_models, "tiny_voc", tmp_path, 20, ["vocals"])
    _publish(server, user_models, "tiny_rev", tmp_path, 21, ["noreverb"])
    _publish(server, user_models, "tiny_kar", tmp_path, 22, ["lead", "backing"])
    spec = "tiny_voc:vocals > tiny_rev:noreverb > tiny_kar"
    assert _run(song, tmp_path / "c", "--model", spec, "-q") == 0
    folder = tmp_path / "c" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [
        "vocals-noreverb-backing.wav", "vocals-noreverb-lead.wav"
    ]  # fmt: skip
    x = torch.from_numpy(_read(song).T.copy())
    for name, stem in (("tiny_voc", "vocals"), ("tiny_rev", "noreverb")):
        x = Separator(load_model(name), device="cpu").separate_tensor(x, 44100)[stem]
    last = Separator(load_model("tiny_kar"), device="cpu").separate_tensor(x, 44100)
    for stem in ("lead", "backing"):
        got = _read(folder / f"vocals-noreverb-{stem}.wav")
        np.testing.assert_allclose(got, last[stem].numpy().T, atol=1e-5)
    card = {"name": "tiny_chain", "chain": ["tiny_voc:vocals", "tiny_rev:noreverb", "tiny_kar"]}
    (user_models / "tiny_chain.yaml").write_text(yaml.safe_dump(card))
    argv = ["--model", "tiny_chain", "-q", "--stems", "vocals-noreverb-lead,instrumental"]
    assert _run(song, tmp_path / "d", *argv) == 0
    lead = _read(tmp_path / "d" / "song" / "vocals-noreverb-lead.wav")
    np.testing.assert_allclose(lead, _read(folder / "vocals-noreverb-lead.wav"), atol=1e-6)
    assert (tmp_path / "d" / "song" / "instrumental.wav").is_file()
