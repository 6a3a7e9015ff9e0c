"""Chains: each step separates one stem of the previous step's output, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from separator.errors import SeparatorError
from separator.inference import Separator
from separator.inference.chain import Chain
from tests.tiny_models import ConvModel, GainModel


def _conv(seed: int, stems=("vocals", "other")) -> ConvModel:
    m = ConvModel(stems=stems)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g) * 0.2)
    return m


def _sep(model) -> Separator:
    return Separator(model, device="cpu", overlap=2)


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    return torch.randn(2, 9001, generator=torch.Generator().manual_seed(2)) * 0.3


def test_each_step_runs_on_the_stem_of_the_previous_one(wav) -> None:
    a, b, c = _sep(_conv(1)), _sep(_conv(2, ("noreverb",))), _sep(_conv(3, ("lead", "backing")))
    chain = Chain([a, b, c], ["vocals", "noreverb"], names=["a", "b", "c"])
    out = chain.separate_tensor(wav, 8000)  # default: the last step's stems
    assert list(out) == ["vocals-noreverb-lead", "vocals-noreverb-backing"]
    step1 = a.separate_tensor(wav, 8000)
    step2 = b.separate_tensor(step1["vocals"], 8000)
    step3 = c.separate_tensor(step2["noreverb"], 8000)
    for stem in ("lead", "backing"):
        np.testing.assert_allclose(out[f"vocals-noreverb-{stem}"], step3[stem], atol=1e-6)
    # every path is an output: intermediate stems and each step's residuals
    names = "vocals,other,no_vocals,vocals-noreverb,vocals-no_noreverb,vocals-noreverb-no_lead"
    more = chain.separate_tensor(wav, 8000, stems=names)
    np.testing.assert_allclose(more["vocals"], step1["vocals"], atol=1e-6)
    np.testing.assert_allclose(more["other"], step1["other"], atol=1e-6)
    np.testing.assert_allclose(more["no_vocals"], wav - step1["vocals"], atol=1e-6)
    np.testing.assert_allclose(more["vocals-noreverb"], step2["noreverb"], atol=1e-6)
    reverb = step1["vocals"] - step2["noreverb"]  # a step's residual is its input minus the stem
    np.testing.assert_allclose(more["vocals-no_noreverb"], reverb, atol=1e-6)
    np.testing.assert_allclose(
        more["vocals-noreverb-no_lead"], step2["noreverb"] - step3["lead"], atol=1e-6
    )


def test_a_residual_can_be_chained_and_unused_steps_do_not_run(wav) -> None:
    a = _sep(GainModel(stems=("vocals",), gains=(0.25,)))
    b = _sep(GainModel(stems=("drums", "rest"), gains=(0.5, 0.5)))
    chain = Chain([a, b], ["instrumental"])
    out = chain.separate_tensor(wav, 8000, stems="instrumental-drums,vocals")
    np.testing.assert_allclose(out["instrumental-drums"], 0.5 * 0.75 * wav, atol=1e-6)
    np.testing.assert_allclose(out["vocals"], 0.25 * wav, atol=1e-6)
    pipe = chain._pipeline(8000, 2, chain._plans("vocals"), "x")
    assert len(pipe.pipes) == 1  # only the first step is needed for step-1 outputs


def test_streaming_file_keeps_memory_bounded(tmp_path) -> None:
    """A long input in blocks: exact output, and no step runs ahead of the others by more than a
    chunk or two, however long the input (memory is constant in track length)."""
    rate, n = 8000, 8000 * 30
    t = np.arange(n) / rate  # band-limited, so a step at another rate keeps it
    x = 0.3 * np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 1234 * t)], 1)
    x = x.astype(np.float32)
    a = _sep(GainModel(stems=("vocals", "other"), gains=(0.5, 0.5), chunk_size=1000))
    b = _sep(GainModel(stems=("noreverb",), gains=(0.8,), chunk_size=3000, sample_rate=16000))
    chain = Chain([a, b], ["vocals"])
    pipe = chain._pipeline(rate, 2, chain._plans(None), "long.wav")
    peak, outs = 0, []
    for start in range(0, n, 4096):
        outs.append(pipe.push(x[start : start + 4096])["vocals-noreverb"])
        peak = max(peak, pipe.queued())
    outs.append(pipe.flush()["vocals-noreverb"])
    got = np.concatenate(outs)
    assert got.shape == (n, 2) and peak < 2 * 4096
    err = np.abs(got - 0.4 * x)[200:-200]  # 0.5 * 0.8, through a step at 16 kHz
    assert err.max() < 2e-3
    path = tmp_path / "song.wav"
    sf.write(path, x[: 8000 * 3], rate, subtype="FLOAT")
    written = _sep_chain_file(chain, path, tmp_path / "out")
    assert written["vocals-noreverb"].name == "vocals-noreverb.wav"
    assert sf.info(written["vocals-noreverb"]).frames == 8000 * 3


def _sep_chain_file(chain: Chain, path, out):
    return chain.separate_file(path, output_dir=out)


def test_bad_chains_are_refused() -> None:
    a, b = _sep(_conv(1)), _sep(_conv(2, ("noreverb",)))
    with pytest.raises(SeparatorError, match="no stem 'drums' to pass on"):
        Chain([a, b], ["drums"], names=["a", "b"])
    with pytest.raises(SeparatorError, match="two or more steps"):
        Chain([a], [])


DEMUCS_BAG = Path(__file__).parent / "fixtures" / "demucs" / "bag_small.yaml"


@pytest.mark.parametrize("taken", ["vocals", "no_vocals"])
def test_a_normalising_demucs_model_can_be_a_later_step(taken, tmp_path) -> None:
    """Its mixture statistics come from a first pass over its own input: the steps before it
    run again on the mixture, so the chain equals the steps run one after another."""
    import separator

    first = _sep(_conv(4))
    bag = Separator(separator.load_model(DEMUCS_BAG), device="cpu", shifts=0)
    assert bag.pipeline.normalize
    mix = torch.randn(2, 30000, generator=torch.Generator().manual_seed(5)) * 0.3
    chain = Chain([first, bag], [taken])
    out = chain.separate_tensor(mix, 44100)
    alone = bag.separate_tensor(first.separate_tensor(mix, 44100, stems=taken)[taken], 44100)
    assert list(out) == [f"{taken}-{s}" for s in bag.stems]
    for stem in bag.stems:
        torch.testing.assert_close(out[f"{taken}-{stem}"], alone[stem], atol=1e-5, rtol=0)
    path = tmp_path / "song.wav"  # from a file: the first pass reads the file again
    sf.write(path, mix.numpy().T, 44100, subtype="FLOAT")
    written = chain.separate_file(path, output_dir=tmp_path / "out", stems=f"{taken}-drums")
    got = sf.read(written[f"{taken}-drums"], dtype="float32")[0].T
    np.testing.assert_allclose(got, alone["drums"].numpy(), atol=1e-5)
