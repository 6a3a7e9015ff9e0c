"""The embedded default model: it ships, loads without a network, and its output is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from separator.cli import separate_main
from separator.inference import load_separator
from separator.zoo import DEFAULT_MODEL, find_card
from separator.zoo.catalog import pretrained_dir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bach_bwv10.7.flac"
GOLDEN = Path(__file__).parent / "fixtures" / "default_model_golden.safetensors"


def test_default_card_is_shipped_small_and_hashed() -> None:
    card = find_card(DEFAULT_MODEL)
    assert card is not None and card.path.parent == pretrained_dir()
    assert card.stems == ("vocals", "drums", "bass", "other")
    weights = card.weights_path
    assert weights.is_file() and weights.stat().st_size <= 30 * 2**20
    assert card.weights["size"] == weights.stat().st_size
    for key in ("rendered_test", "stempeg", "fof"):  # the measured figures are in the card
        assert key in card.sdr, key


def test_default_model_output_matches_golden(monkeypatch) -> None:
    monkeypatch.setenv("SEPARATOR_OFFLINE", "1")  # never needs the network
    sep = load_separator(device="cpu")
    golden = load_file(GOLDEN)
    out = sep.separate_tensor(golden["input"], 44100)
    for i, stem in enumerate(sep.stems):
        torch.testing.assert_close(out[stem], golden["output"][i], atol=2e-4, rtol=0)
    # and the model does separate: the stems differ from each other and from the input
    assert min((out[s] - golden["input"]).abs().mean() for s in sep.stems) > 1e-3


@pytest.mark.skipif(not EXAMPLE.is_file(), reason="example clip not in this checkout")
def test_readme_command_writes_the_shipped_example_stems(tmp_path) -> None:
    """`separate examples/bach_bwv10.7.flac` with no --model reproduces examples/separated/."""
    rc = separate_main(
        [str(EXAMPLE), "-o", str(tmp_path), "-q", "--format", "flac", "--bits", "16"]
    )
    assert rc == 0
    for stem in ("vocals", "drums", "bass", "other"):
        got, rate = sf.read(
            tmp_path / "separator_default" / "bach_bwv10.7" / f"{stem}.flac", dtype="float32"
        )
        shipped, _ = sf.read(
            ROOT / "examples" / "separated" / "bach_bwv10.7" / f"{stem}.flac", dtype="float32"
        )
        assert rate == 44100 and got.shape == shipped.shape
        assert np.abs(got - shipped).max() <= 3 / 2**15  # 16-bit rounding, nothing more


def write_golden() -> None:
    """Regenerate the golden file after retraining: python3 -m tests.test_pretrained"""
    from safetensors.torch import save_file

    audio, rate = sf.read(EXAMPLE, dtype="float32", start=44100 * 4, frames=33075)
    wav = torch.from_numpy(np.ascontiguousarray(audio.T))
    sep = load_separator(device="cpu")
    out = sep.separate_tensor(wav, rate)
    save_file({"input": wav, "output": torch.stack([out[s] for s in sep.stems])}, GOLDEN)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    write_golden()
