"""The family registry is the one extension point: a family registered from outside the package,
plus a card for it, is all `separate --model card.yaml` needs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from separator.cli import separate_main
from separator.errors import ConfigError
from separator.files import sha256_file
from separator.nn import FAMILIES, Family, register, set_io, unregister

RATE = 16000


class ToyGain(nn.Module):
    """Stem k = gains[k] · mixture. forward: (b, c, t) -> (b, stems, c, t)."""

    def __init__(self, stems: int, channels: int) -> None:
        super().__init__()
        self.gains = nn.Parameter(torch.zeros(stems))
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.gains[None, :, None, None] * x[:, None]


def build_toy(model, *, sample_rate: int, stems: Sequence[str], chunk_size: int) -> nn.Module:
    module = ToyGain(int(model["num_stems"]), int(model.get("channels", 2)))
    return set_io(
        module,
        sample_rate=sample_rate,
        stems=stems,
        chunk_size=chunk_size,
        audio_channels=module.channels,
        num_stems=int(model["num_stems"]),
    )


@pytest.fixture
def toy_family():
    family = register(Family(name="toy_gain", build=build_toy, description="test family"))
    yield family
    unregister("toy_gain")
    assert "toy_gain" not in FAMILIES


def write_card(tmp_path, gains, stems, **extra) -> str:
    weights = tmp_path / "toy.safetensors"
    save_file({"gains": torch.tensor(gains, dtype=torch.float32)}, str(weights))
    card = {
        "name": "toy",
        "architecture": "toy_gain",
        "model": {"num_stems": len(gains)},
        "stems": stems,
        "sample_rate": RATE,
        "chunk_size": RATE // 2,
        "weights": {"file": weights.name, "sha256": sha256_file(weights)},
        **extra,
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(card))
    return str(path)


def test_a_registered_family_separates_end_to_end(tmp_path, toy_family):
    card = write_card(tmp_path, [0.25, 0.75], ["lead", "rest"])
    mix = (0.3 * np.random.default_rng(0).standard_normal((RATE * 2, 2))).astype(np.float32)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    out = tmp_path / "out"
    code = separate_main([str(tmp_path / "song.wav"), "--model", card, "-o", str(out),
                          "--bits", "32", "--clip", "none"])  # fmt: skip
    assert code == 0
    lead, rate = sf.read(out / "toy" / "song" / "lead.wav", dtype="float32")
    rest, _ = sf.read(out / "toy" / "song" / "rest.wav", dtype="float32")
    assert rate == RATE and lead.shape == mix.shape
    np.testing.assert_allclose(lead, 0.25 * mix, atol=1e-6)
    np.testing.assert_allclose(rest, 0.75 * mix, atol=1e-6)


def test_stems_that_disagree_with_the_outputs_are_one_line(tmp_path, toy_family, capsys):
    card = write_card(tmp_path, [0.5, 0.5], ["a", "b", "c"])
    sf.write(tmp_path / "song.wav", np.zeros((RATE, 2), np.float32), RATE)
    assert separate_main([str(tmp_path / "song.wav"), "--model", card, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "toy.yaml" in err and "3 stem names" in err and "2 output stem(s)" in err


def test_a_card_by_path_is_checked_against_its_sha256(tmp_path, toy_family, capsys):
    card = write_card(tmp_path, [0.5, 0.5], ["a", "b"])
    save_file({"gains": torch.tensor([9.0, 9.0])}, str(tmp_path / "toy.safetensors"))  # replaced
    sf.write(tmp_path / "song.wav", np.zeros((RATE, 2), np.float32), RATE)
    assert separate_main([str(tmp_path / "song.wav"), "--model", card, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not match the card's sha256" in err and len(err.strip().splitlines()) == 1


def test_unknown_architecture_lists_the_families(tmp_path):
    from separator.zoo import read_card

    path = tmp_path / "x.yaml"
    path.write_text(
        yaml.safe_dump({"name": "x", "architecture": "nope", "model": {}, "stems": ["a"]})
    )
    with pytest.raises(ConfigError, match=r"x.yaml: .*unknown architecture 'nope'.*bs_roformer"):
        read_card(path)


def test_registry_refuses_taken_names(toy_family):
    with pytest.raises(ConfigError, match="already registered"):
        register(Family(name="toy_gain", build=build_toy))
    with pytest.raises(ConfigError, match="built in"):
        unregister("bs_roformer")
