"""Model cards, `separator models ...`, models by name (downloaded from a loopback server),
ensembles from the command line, and import of MSST checkpoints."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from separator.cli import main, separate_main
from separator.errors import SeparatorError
from separator.inference import Separator, load_separator
from separator.zoo import (
    ChainCard,
    EnsembleCard,
    ModelCard,
    all_cards,
    build_model,
    load_model,
    read_card,
    resolve,
)
from separator.zoo.cards import entry_urls
from separator.zoo.catalog import card_files, checkpoint_names, models_dir
from separator.zoo.formats import save_state_dict
from tests.loopback import Server
from tests.test_checkpoints import MSST_BS_YAML, write_evil_checkpoint

# --- the shipped cards ---------------------------------------------------------------------------


def test_every_shipped_card_builds_with_its_stems() -> None:
    cards = all_cards()  # raises on duplicate names
    assert len(cards) == len(card_files()) >= 80
    built: dict[str, tuple] = {}  # many cards share one config: build each shape once
    for name, card in cards.items():
        assert card.path.stem == name, f"{card.path}: file name differs from the card name"
        if isinstance(card, EnsembleCard):
            for member in card.models:
                assert isinstance(cards.get(member), ModelCard), f"{name}: unknown {member}"
            continue
        if not isinstance(card, ModelCard):
            continue  # chains: see test_chain_cards_name_known_models_and_stems
        key = json.dumps(
            [card.architecture, card.model, card.sample_rate, card.stems], sort_keys=True
        )
        if key not in built:
            with torch.device("meta"):
                model = build_model(card)
            # set_io checks for every family that the module has one output per stem
            built[key] = (len(model.stems), sum(p.numel() for p in model.parameters()))
            assert model.stems == card.stems, name
        num_stems, params = built[key]
        assert num_stems == len(card.stems), name
        assert card.weight_entries, name
        for entry in card.weight_entries:  # one per file (a demucs bag has one per member)
            urls = entry_urls(entry)
            assert urls or entry.get("file"), name
            assert all(u.startswith("https://") for u in urls), name
            sha = entry.get("sha256")
            assert sha is None or len(sha) == 64
        n = card.weights.get("size")
        if n and any(u.endswith((".ckpt", ".pth")) for u in card.urls):
            # a float32 checkpoint holds 4 bytes per parameter (plus a little pickle framing)
            assert abs(n / 4 - params) / params < 0.01, name


def test_known_checkpoint_names_have_cards_or_reasons() -> None:
    """Every RoFormer file name audio-separator and UVR offer resolves to its card, or is listed in
    models/known_checkpoints.txt with the reason it has none (and then must not resolve)."""
    names = checkpoint_names()
    lines = (models_dir() / "known_checkpoints.txt").read_text().splitlines()
    entries = [line.split(" | ") for line in lines if line.strip() and not line.startswith("#")]
    assert len(entries) >= 86
    without = []
    for entry in entries:
        file = entry[0].strip()
        if len(entry) == 1:
            assert file in names, f"{file}: no card has a weights URL with this file name"
            assert resolve(file)[0].name == names[file]
            assert resolve(Path(file).stem)[0].name == names[file]  # the stem works too
        else:
            assert entry[1].startswith("no card: ") and len(entry[1]) > 30, file
            assert file not in names, f"{file}: has a card now; drop its reason"
            without.append(file)
    assert len(without) <= 8


def test_checkpoint_file_name_resolves_from_the_cli(capsys) -> None:
    assert main(["models", "show", "model_bs_roformer_ep_317_sdr_12.9755.ckpt"]) == 0
    assert "name: bs_roformer_viperx_1297" in capsys.readouterr().out
    with pytest.raises(SeparatorError, match="no such model file"):
        resolve("surely_not_a_known_checkpoint.ckpt")


def test_chain_cards_name_known_models_and_stems() -> None:
    from separator.inference.stems import available_stems

    cards = all_cards()
    chains = [c for c in cards.values() if isinstance(c, ChainCard)]
    assert len(chains) >= 2
    for chain in chains:
        for model, stem in chain.steps:
            card = cards.get(model)
            assert isinstance(card, ModelCard), f"{chain.name}: unknown model {model}"
            assert stem is None or stem in available_stems(card.stems), (chain.name, stem)
    presets = [c for c in cards.values() if isinstance(c, EnsembleCard)]
    assert {"min_fft", "max_fft", "max_spec", "avg"} <= {p.method for p in presets}


def test_required_community_models_are_there() -> None:
    cards = all_cards()
    for name in (
        "bs_roformer_viperx_1297",  # ep_317
        "bs_roformer_viperx_1053",  # ep_937
        "mel_band_roformer_viperx_1143",  # ep_3005
        "mel_band_roformer_kim_vocals",
        "bs_roformer_musdb18_4stem",
    ):
        assert name in cards
    assert cards["bs_roformer_musdb18_4stem"].stems == ("drums", "bass", "other", "vocals")


def test_models_list_shows_reported_sdr(capsys) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "bs_roformer_viperx_1297" in line)
    assert "vocals 10.87" in row and "bs_roformer" in row and "639 MB" in row
    assert "mel_band_roformer_kim_vocals" in out


def test_models_list_filters_sort_and_json(capsys) -> None:
    argv = ["models", "list", "--arch", "bs_roformer", "--stem", "vocals", "--sort", "sdr"]
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 5 and {r["architecture"] for r in rows} == {"bs_roformer"}
    assert all("vocals" in r["stems"] for r in rows)
    vocal_sdr = [r["sdr"].get("vocals") for r in rows]
    known = [v for v in vocal_sdr if v is not None]
    assert known == sorted(known, reverse=True) and vocal_sdr[: len(known)] == known
    assert main(["models", "list", "--search", "DEREVERB", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 8 and all("dereverb" in r["name"] or "deverb" in str(r) for r in rows)
    assert main(["models", "list", "--arch", "ensemble", "--json"]) == 0
    assert {r["kind"] for r in json.loads(capsys.readouterr().out)} == {"ensemble"}
    assert main(["models", "list", "--sort", "size"]) == 2
    assert "--sort" in capsys.readouterr().err


# --- a model served from 127.0.0.1 ---------------------------------------------------------------


def _tiny_card(tmp_path: Path, seed: int) -> tuple[ModelCard, bytes]:
    """A tiny BS-RoFormer card and its safetensors bytes."""
    cfg = tmp_path / "msst.yaml"
    cfg.write_text(MSST_BS_YAML)
    card = read_card(cfg)
    model = build_model(card)
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / f"w{seed}.safetensors"
    save_state_dict(model, path)
    return card, path.read_bytes()


def _publish(server, folder: Path, name: str, card: ModelCard, body: bytes, sha=True) -> str:
    server.files[f"/m/{name}.safetensors"] = body
    url = server.url(f"/m/{name}.safetensors")
    weights = {"url": url, "size": len(body)}
    if sha:
        weights["sha256"] = hashlib.sha256(body).hexdigest()
    data = {
        "name": name,
        "architecture": card.architecture,
        "model": card.model,
        "stems": list(card.stems),
        "sample_rate": card.sample_rate,
        "chunk_size": 44100,
        "weights": weights,
        "sdr": {"benchmark": "none", "vocals": 1.0},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return url


@pytest.fixture
def song(tmp_path, stempeg_example) -> Path:
    path = tmp_path / "song.wav"
    sf.write(path, stempeg_example["mixture"][:, : 44100 * 2].T, 44100, subtype="FLOAT")
    return path


def _read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def test_separate_by_name_downloads_verifies_and_caches(
    server, cache, user_models, tmp_path, song, capsys
) -> None:
    card, body = _tiny_card(tmp_path, 1)
    _publish(server, user_models, "tiny_a", card, body)
    argv = [str(song), "--model", "tiny_a", "-o", str(tmp_path / "out"), "-q", "--bits", "32"]
    assert separate_main(argv) == 0
    cached = cache / "tiny_a" / "tiny_a.safetensors"
    assert cached.read_bytes() == body
    # the output is the model's, loaded straight from the bytes that were served
    direct = Separator(load_model(read_card(user_models / "tiny_a.yaml"), cached), device="cpu")
    wav = torch.from_numpy(_read(song).T.copy())
    expected = direct.separate_tensor(wav, 44100)["vocals"].numpy().T
    np.testing.assert_allclose(
        _read(tmp_path / "out" / "tiny_a" / "song" / "vocals.wav"), expected, atol=1e-6
    )
    assert main(["models", "verify", "tiny_a"]) == 0
    assert "OK" in capsys.readouterr().out
    requests = len(server.requests)
    assert separate_main(argv + ["--force"]) == 0
    assert len(server.requests) == requests  # cached: no second download
    out = capsys.readouterr().out
    assert main(["models", "list"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "tiny_a" in x)
    assert row.split("│")[-2].strip() == "yes", out
    cached.write_bytes(body[:-1] + b"\0")  # corrupt the cache
    assert main(["models", "verify", "tiny_a"]) == 2
    assert "MISMATCH" in capsys.readouterr().err


def test_download_cli_with_unpublished_hash_pins_it(server, cache, user_models, tmp_path) -> None:
    card, body = _tiny_card(tmp_path, 2)
    url = _publish(server, user_models, "tiny_b", card, body, sha=False)
    with pytest.warns(UserWarning, match="no sha256 was published"):
        assert main(["models", "download", "tiny_b"]) == 0
    pins = (cache / "pins.json").read_text()
    assert url in pins and hashlib.sha256(body).hexdigest() in pins
    server.files["/m/tiny_b.safetensors"] = body[:-1] + b"\1"  # the host now serves other bytes
    (cache / "tiny_b" / "tiny_b.safetensors").unlink()
    assert main(["models", "download", "tiny_b"]) == 2
    assert not (cache / "tiny_b" / "tiny_b.safetensors").exists()  # never kept, never loaded


def test_unreachable_network_says_what_to_do(cache, user_models, tmp_path, capsys) -> None:
    card, body = _tiny_card(tmp_path, 3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = Server()
    srv.base = f"http://127.0.0.1:{port}"
    url = _publish(srv, user_models, "tiny_c", card, body)
    assert main(["models", "download", "tiny_c"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err and url in err
    assert str(cache / "tiny_c" / "tiny_c.safetensors") in err


def test_offline_fails_fast_with_url_and_path(cache, user_models, tmp_path, song, capsys) -> None:
    card, body = _tiny_card(tmp_path, 4)
    srv = Server()
    srv.base = "http://127.0.0.1:9"
    url = _publish(srv, user_models, "tiny_d", card, body)
    assert separate_main([str(song), "--model", "tiny_d", "--offline", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and url in err and str(cache / "tiny_d") in err


# --- ensembles from the command line -------------------------------------------------------------


def test_cli_ensemble_is_the_weighted_average(
    server, cache, user_models, tmp_path, song, stempeg_example
) -> None:
    for seed, name in ((5, "tiny_e"), (6, "tiny_f")):
        card, body = _tiny_card(tmp_path, seed)
        _publish(server, user_models, name, card, body)
    out = {}
    for models, extra in (("tiny_e", []), ("tiny_f", []), ("tiny_e,tiny_f", ["--weights", "1,3"])):
        folder = tmp_path / models.replace(",", "+")
        argv = [str(song), "--model", models, "-o", str(folder), "-q", "--bits", "32"] + extra
        assert separate_main(argv) == 0
        label = models.replace(",", "+")  # {model} of an ensemble: its members joined by "+"
        out[models] = _read(folder / label / "song" / "vocals.wav")
    expected = (out["tiny_e"] + 3 * out["tiny_f"]) / 4
    np.testing.assert_allclose(out["tiny_e,tiny_f"], expected, atol=1e-6)
    assert np.abs(out["tiny_e"] - out["tiny_f"]).max() > 1e-3

    # an ensemble card names the same combination; `evaluate` accepts it like a model
    ens = {"name": "tiny_ens", "ensemble": {"models": ["tiny_e", "tiny_f"], "weights": [1, 3]}}
    (user_models / "tiny_ens.yaml").write_text(yaml.safe_dump(ens))
    sep = load_separator("tiny_ens", device="cpu")
    wav = torch.from_numpy(_read(song).T.copy())
    np.testing.assert_allclose(sep.separate_tensor(wav, 44100)["vocals"].T, expected, atol=1e-6)
    root = tmp_path / "db"
    track = root / "test" / "Song"
    track.mkdir(parents=True)
    for stem in ("mixture", "vocals"):
        x = stempeg_example[stem][:, : 44100 * 2]
        sf.write(track / f"{stem}.wav", x.T, 44100, subtype="FLOAT")
    ev = tmp_path / "ev"
    rc = main(["evaluate", str(root), "--model", "tiny_ens", "--stems", "vocals", "-o", str(ev)])
    assert rc == 0
    assert "vocals" in (ev / "summary.md").read_text()


def test_ensemble_options_need_several_models(user_models, tmp_path, song, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MSST_BS_YAML)
    rc = separate_main(
        [str(song), "--model", str(cfg), "--ensemble", "median", "-o", str(tmp_path)]
    )
    assert rc == 2 and "several models" in capsys.readouterr().err


# --- import -----------------------------------------------------------------------------------


def test_import_msst_wrapped_checkpoint(user_models, tmp_path, song) -> None:
    cfg = tmp_path / "msst.yaml"
    cfg.write_text(MSST_BS_YAML)
    card = read_card(cfg)
    ref = build_model(card)
    torch.manual_seed(7)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ckpt = tmp_path / "model.ckpt"  # MSST/DDP layout: state_dict with "module." prefixes
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    assert main(["models", "import", str(ckpt), "--config", str(cfg), "--name", "mine"]) == 0
    assert (user_models / "mine.safetensors").is_file() and (user_models / "mine.yaml").is_file()
    model = load_separator("mine", device="cpu").model
    x = torch.randn(1, 2, 4000)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref.eval()(x))
    assert separate_main([str(song), "--model", "mine", "-o", str(tmp_path / "o"), "-q"]) == 0
    # the name is taken now
    assert main(["models", "import", str(ckpt), "--config", str(cfg), "--name", "mine"]) == 2


def test_import_refuses_a_malicious_pickle(user_models, tmp_path, capsys) -> None:
    cfg = tmp_path / "msst.yaml"
    cfg.write_text(MSST_BS_YAML)
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    write_evil_checkpoint(ckpt, marker)
    assert main(["models", "import", str(ckpt), "--config", str(cfg), "--name", "evil"]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not any(user_models.iterdir())
