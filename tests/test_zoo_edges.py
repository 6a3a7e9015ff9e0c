"""Zoo and `models` edges: failed downloads leave no empty cache folder, a training run's folder
loads through its exported card, `models list` fits the terminal."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

from separator.errors import SeparatorError
from separator.zoo import download as zoo
from tests.loopback import PAYLOAD

SHA = __import__("hashlib").sha256(PAYLOAD).hexdigest()
ROOT = Path(__file__).resolve().parents[1]


def _unreachable_url() -> str:
    with socket.socket() as s:  # bind then close: a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/w/model.bin"


@pytest.mark.parametrize("failure", ["unreachable", "offline", "404", "wrong-hash"])
def test_a_failed_download_leaves_no_cache_folder(server, cache, failure):
    dest = cache / "some_model" / "model.bin"  # where the loader puts a card's weights
    url = {"unreachable": _unreachable_url(), "404": server.url("/w/missing.bin")}.get(
        failure, server.url()
    )
    sha = "ab" * 32 if failure == "wrong-hash" else SHA
    with pytest.raises(SeparatorError):
        zoo.fetch(url, sha, dest=dest, offline=failure == "offline", progress=False)
    assert not dest.parent.exists()
    assert list(cache.iterdir()) == []


def test_a_dropped_download_keeps_its_part_for_resume(server, cache):
    server.truncate_at = 1000
    dest = cache / "some_model" / "model.bin"
    with pytest.raises(SeparatorError, match="run again to resume"):
        zoo.fetch(server.url(), SHA, dest=dest, progress=False)
    assert [p.name for p in dest.parent.iterdir()] == ["model.bin.part"]


def test_a_training_run_folder_loads_through_its_exported_card(tmp_path):
    """runs/<name>/ holds recipe.yaml beside the exported card: `--model runs/<name>/` takes
    the card."""
    import yaml
    from test_bad_models import tiny_card
    from tiny_models import noise, write_wav

    from separator.cli import separate_main
    from separator.training import load_recipe
    from separator.zoo import load_model

    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml").to_dict()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "notes.yaml").write_text("just: notes\n")
    card = tiny_card(run)
    assert load_model(run).model_name == "tiny"
    song = write_wav(tmp_path / "song.wav", noise(2, 44100 // 2), 44100)
    out = tmp_path / "out"
    assert (
        separate_main(
            [
                str(song),
                "--model",
                f"{run}/",
                "-o",
                str(out),
                "-q",
                "--filename",
                "{track}/{stem}.{ext}",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "song").iterdir()) == ["other.wav", "vocals.wav"]
    (run / "copy.yaml").write_text(card.read_text())  # two cards: which one is meant?
    with pytest.raises(SeparatorError, match=r"expected one model card .* found 2"):
        load_model(run)


def test_models_list_fits_the_terminal(monkeypatch, capsys):
    from separator.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["models", "list"]) == 0
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", x) for x in capsys.readouterr().out.splitlines()]
    assert max(len(x) for x in lines) <= 100
    assert any("bs_roformer_viperx_1297" in x for x in lines)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # piped: one row per line
    assert main(["models", "list"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "bs_roformer_viperx_1297" in x)
    assert "vocals 10.87" in row and "639 MB" in row
