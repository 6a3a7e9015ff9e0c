"""The apply_model engine (`separator.inference.apply_model`) against demucs 4.1.0's
`demucs.apply.apply_model`: golden cases, random configurations and lengths, streaming, memory.

demucs draws shift offsets from Python's global `random` (which HTDemucs's forward also draws
from); the comparisons give demucs our offsets by patching `random.randint`.
"""

from __future__ import annotations

import json
import random
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from safetensors import safe_open

import separator
from separator.errors import SeparatorError
from separator.inference.apply_model import ApplyModelEngine, shift_offsets
from separator.inference.engine import NonFiniteOutputError
from separator.inference.mixture_norm import RunningMoments, mixture_stats
from separator.nn import demucs as demucs_nn
from separator.zoo.pipeline import PipelineSpec, resolve_pipeline
from tests.test_demucs_nn import _randomize

demucs = pytest.importorskip("demucs")
from demucs.apply import BagOfModels, apply_model  # noqa: E402
from demucs.demucs import Demucs as RefDemucs  # noqa: E402
from demucs.hdemucs import HDemucs as RefHDemucs  # noqa: E402
from demucs.htdemucs import HTDemucs as RefHTDemucs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread

FIXTURES = Path(__file__).parent / "fixtures" / "demucs"
CASES = ["htdemucs_4s", "htdemucs_6s", "hdemucs_v3", "demucs_v2"]
REFS = {"htdemucs": RefHTDemucs, "hdemucs": RefHDemucs, "demucs": RefDemucs}


def golden(case: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / f"{case}.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


# --- golden cases --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_separate_tensor_equals_apply_model(case):
    """separate_tensor(model, mix, shifts=0) = apply_model(model, mix, shifts=0, split=True,
    overlap=0.25): 5 chunks, the last one short, each widened with real neighbouring samples."""
    tensors, meta = golden(case)
    model = separator.load_model(FIXTURES / f"{case}.th")
    assert model.pipeline == PipelineSpec("apply_model", 0.25, 1.0, 1, True)
    plan = json.loads(meta["apply_plan"])
    engine = ApplyModelEngine(model, shifts=0)
    stream = engine.streams[0][0]
    assert (stream.plan.length, stream.plan.stride) == (plan["segment_length"], plan["stride"])
    out = separator.separate_tensor(model, tensors["__apply_input__"][0], shifts=0)
    torch.testing.assert_close(out, tensors["__apply_output__"][0], atol=1e-5, rtol=0)


def test_shift_with_the_stored_offset():
    tensors, meta = golden("htdemucs_4s")
    stored = json.loads(meta["apply_shifts1"])
    model = separator.load_model(FIXTURES / "htdemucs_4s.th")
    mix = tensors["__apply_input__"][0]
    out = separator.separate_tensor(model, mix, shifts=1, offsets=stored["offsets"])
    torch.testing.assert_close(out, tensors["__apply_shifts1_output__"][0], atol=1e-5, rtol=0)


def test_bag_yaml_apply_and_separator_normalisation():
    tensors, meta = golden("bag_small")
    bag = separator.load_model(FIXTURES / "bag_small.yaml")
    assert isinstance(bag, demucs_nn.DemucsBag) and [m.segment for m in bag.models] == [0.2, 0.2]
    mix = tensors["__apply_input__"][0]
    out = separator.separate_tensor(bag, mix, shifts=0)
    torch.testing.assert_close(out, tensors["__apply_output__"][0], atol=1e-5, rtol=0)
    stats = mixture_stats([mix.numpy().T], 44100, 44100)
    reference = json.loads(meta["separator"])
    assert abs(stats.mean.item() - reference["ref_mean"]) < 1e-9
    assert abs(stats.std.item() - reference["ref_std_plus_eps"]) < 1e-8
    sep = separator.Separator(bag, device="cpu", shifts=0)
    stems = sep.separate_tensor(mix, sample_rate=44100)
    out = torch.stack([stems[s] for s in sep.stems])
    torch.testing.assert_close(out, tensors["__separate_output__"][0], atol=1e-5, rtol=0)


def test_streaming_in_any_blocks_is_bit_identical():
    tensors, _ = golden("htdemucs_4s")
    model = separator.load_model(FIXTURES / "htdemucs_4s.th")
    mix = tensors["__apply_input__"][0]
    settings = dict(shifts=2, offsets=[7, 13621], batch_size=2)
    whole = separator.separate_tensor(model, mix, **settings)
    engine = ApplyModelEngine(model, **settings)
    rng, parts, at = random.Random(3), [], 0
    while at < mix.shape[1]:
        n = rng.choice([1, 17, 900, 6000])
        parts.append(engine.push(mix[:, at : at + n]))
        at += n
    parts.append(engine.flush())
    assert torch.equal(torch.cat(parts, dim=-1), whole)


def test_memory_stays_bounded_on_a_long_input():
    """Input and output buffers stay within about two segments, however long the stream."""
    model = demucs_nn.build({"klass": "hdemucs", "kwargs": TINY_H}).eval()
    engine = ApplyModelEngine(model, shifts=1, seed=1)
    stream = engine.streams[0][0]
    length, block = stream.plan.length, 700
    total, largest = 0, 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(60 * length // block):
        total += engine.push(0.1 * torch.randn(2, block, generator=gen)).shape[-1]
        largest = max(largest, stream._in.shape[1], stream._acc.shape[-1])
    total += engine.flush().shape[-1]
    assert total == 60 * length // block * block
    assert largest <= 2 * length + 2 * block


# --- random configurations against demucs --------------------------------------------------------
RATE = 8000  # small rates keep the half-second shift pads short
TINY_H = dict(sources=["a", "b"], channels=4, nfft=64, depth=2, dconv_comp=2, samplerate=RATE,
              segment=0.25)  # fmt: skip


@st.composite
def member(draw, klass: str):
    common = dict(sources=["a", "b", "c"], channels=4, samplerate=RATE)
    if klass == "htdemucs":
        kwargs = dict(common, nfft=256, depth=2, t_layers=1, t_heads=2, dconv_comp=2,
                      bottom_channels=draw(st.sampled_from([0, 8])),
                      dconv_mode=draw(st.integers(0, 3)),
                      segment=draw(st.sampled_from([0.25, Fraction(3, 10), 0.31])),
                      use_train_segment=draw(st.booleans()))  # fmt: skip
    elif klass == "hdemucs":
        kwargs = dict(common, nfft=64, depth=draw(st.integers(2, 3)), dconv_comp=2,
                      hybrid_old=draw(st.booleans()), segment=0.25)  # fmt: skip
    else:
        kwargs = dict(common, depth=2, kernel_size=8, stride=4, dconv_comp=2,
                      resample=draw(st.booleans()), normalize=draw(st.booleans()),
                      segment=draw(st.sampled_from([0.2, 0.25])))  # fmt: skip
    return klass, kwargs


@st.composite
def apply_cases(draw):
    kinds = draw(st.sampled_from([["htdemucs"], ["hdemucs"], ["demucs"], ["hdemucs", "demucs"],
                                  ["htdemucs", "hdemucs"]]))  # fmt: skip
    members = [draw(member(k)) for k in kinds]
    bag = len(members) > 1
    weights = None
    if bag and draw(st.booleans()):
        weights = [[draw(st.sampled_from([0.0, 1.0, 2.5])) for _ in range(3)] for _ in members]
        weights[0] = [w or 1.0 for w in weights[0]]  # no source with all-zero weights
    ht = [kw["segment"] for k, kw in members if k == "htdemucs"]
    segment = draw(st.sampled_from([None, 0.2])) if not ht or min(ht) >= 0.2 else None
    return dict(
        members=members,
        bag=bag,
        weights=weights,
        bag_segment=draw(st.sampled_from([None, 0.22])) if bag else None,
        length=draw(st.integers(40, 4 * RATE // 4 + 500)),
        overlap=draw(st.sampled_from([0.0, 0.25, 0.5, 0.8])),
        power=draw(st.sampled_from([1.0, 1.7])),
        shifts=draw(st.integers(0, 2)),
        segment=segment,
        batch_size=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
    )


def twins(case: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours with demucs's pipeline, demucs's) with the same random weights."""
    ours, refs = [], []
    gen = torch.Generator().manual_seed(case["seed"])
    for klass, kwargs in case["members"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = REFS[klass](**kwargs).eval()
        _randomize(ref, gen)
        mine = demucs_nn.make_model(klass, kwargs).eval()
        mine.load_state_dict(ref.state_dict(), strict=True)
        ours.append(mine)
        refs.append(ref)
    if case["bag"]:
        ref = BagOfModels(refs, case["weights"], case["bag_segment"])
        model = demucs_nn.DemucsBag(ours, case["weights"], case["bag_segment"])
    else:
        ref, model = refs[0], ours[0]
    model.pipeline = resolve_pipeline("demucs", {"transition_power": case["power"]})
    return model, ref


def demucs_apply(ref, mix: torch.Tensor, offsets: list[int], monkeypatch, **kwargs):
    """demucs's apply_model, its `random.randint` replaced by our offsets in order."""
    draws = iter(offsets)
    with monkeypatch.context() as patch:
        patch.setattr(random, "randint", lambda a, b: next(draws))
        with torch.no_grad():
            out = apply_model(ref, mix[None], split=True, **kwargs)[0]
    assert next(draws, None) is None  # every offset was drawn
    return out


@seed(20240607)
@settings(
    max_examples=14,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=apply_cases())
def test_separate_tensor_matches_demucs_apply_model(case, monkeypatch):
    check_against_demucs(case, monkeypatch)


HT = dict(sources=["a", "b", "c"], channels=4, samplerate=RATE, nfft=256, depth=2, t_layers=1,
          t_heads=2, dconv_comp=2, dconv_mode=3, segment=Fraction(3, 10))  # fmt: skip
WAVE = dict(sources=["a", "b", "c"], channels=4, samplerate=RATE, depth=2, dconv_comp=2)
HYBRID = dict(sources=["a", "b", "c"], channels=4, samplerate=RATE, nfft=64, depth=3, dconv_comp=2)
HANDPICKED = {  # what the random draws reach rarely: several shifts, a weighted bag under shifts
    "htdemucs_shifts2": dict(members=[("htdemucs", HT)], bag=False, weights=None,
                             bag_segment=None, length=5000, overlap=0.25, power=1.0, shifts=2,
                             segment=None, batch_size=2, seed=11),
    "bag_weights_shifts2": dict(members=[("htdemucs", HT), ("demucs", dict(WAVE, segment=0.25))],
                                bag=True, weights=[[1.0, 0.0, 2.0], [3.0, 1.0, 1.0]],
                                bag_segment=0.22, length=4100, overlap=0.25, power=1.0,
                                shifts=2, segment=0.2, batch_size=1, seed=12),
    "hdemucs_power_batch3": dict(members=[("hdemucs", dict(HYBRID, segment=0.25))], bag=False,
                                 weights=None, bag_segment=None, length=7001, overlap=0.5,
                                 power=1.7, shifts=1, segment=None, batch_size=3, seed=13),
}  # fmt: skip


@pytest.mark.parametrize("name", HANDPICKED)
def test_handpicked_cases_match_demucs_apply_model(name, monkeypatch):
    check_against_demucs(HANDPICKED[name], monkeypatch)


def check_against_demucs(case: dict, monkeypatch) -> None:
    model, ref = twins(case)
    mix = 0.3 * torch.randn(2, case["length"], generator=torch.Generator().manual_seed(1))
    members = len(case["members"]) if case["bag"] else 1
    offsets = shift_offsets(members, case["shifts"], RATE // 2, None, case["seed"])
    flat = [o for member_offsets in offsets for o in member_offsets]
    out = separator.separate_tensor(
        model, mix, overlap=case["overlap"], shifts=case["shifts"], segment=case["segment"],
        offsets=flat, batch_size=case["batch_size"],
    )  # fmt: skip
    expected = demucs_apply(
        ref, mix, flat, monkeypatch, shifts=case["shifts"], overlap=case["overlap"],
        transition_power=case["power"], segment=case["segment"],
    )  # fmt: skip
    assert out.shape == expected.shape == (3, 2, case["length"])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- settings and statistics ---------------------------------------------------------------------
def test_shift_offsets_come_from_our_seed():
    a = shift_offsets(2, 3, 22050, None, seed=5)
    assert a == shift_offsets(2, 3, 22050, None, seed=5) != shift_offsets(2, 3, 22050, None, 6)
    assert [len(o) for o in a] == [3, 3] and all(0 <= o <= 22050 for x in a for o in x)
    assert shift_offsets(2, 1, 10, [[3], [4]], 0) == shift_offsets(2, 1, 10, [3, 4], 0)
    with pytest.raises(SeparatorError, match="`offsets` must lie in"):
        shift_offsets(1, 1, 10, [11], 0)
    with pytest.raises(SeparatorError, match="expected 2 per model"):
        shift_offsets(1, 2, 10, [1], 0)


def test_settings_demucs_refuses_are_refused():
    model = separator.load_model(FIXTURES / "htdemucs_4s.th")  # trained on 0.2 s
    mix = torch.zeros(2, 100)
    with pytest.raises(SeparatorError, match=r"`segment` 0.3 s: a transformer model runs at most"):
        separator.separate_tensor(model, mix, segment=0.3)
    with pytest.raises(SeparatorError, match=r"`overlap` for apply_model must be in \[0, 1\)"):
        ApplyModelEngine(model, overlap=1.0)
    with pytest.raises(SeparatorError, match="`transition_power` must be >= 1"):
        ApplyModelEngine(model, transition_power=0.5)
    out = separator.separate_tensor(model, mix, segment=0.1, shifts=0)  # shorter is fine
    assert out.shape == (4, 2, 100)


def test_overlap_as_evaluations_per_sample():
    """overlap >= 1 counts evaluations per sample (the overlap-add engine's meaning)."""
    tensors, _ = golden("hdemucs_v3")
    model = separator.load_model(FIXTURES / "hdemucs_v3.th")
    mix = tensors["__apply_input__"][0]
    a = separator.separate_tensor(model, mix, overlap=1.25, shifts=0)
    b = separator.separate_tensor(model, mix, overlap=0.2, shifts=0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("sizes", [[1, 1], [5, 1000, 3], [65536, 65536, 100]])
def test_running_moments_equal_the_whole_array(sizes):
    rng = np.random.default_rng(len(sizes))
    parts = [rng.normal(0.3, 2.0, n).astype(np.float32) for n in sizes]
    moments = RunningMoments()
    for p in parts:
        moments.add(p)
    whole = torch.from_numpy(np.concatenate(parts))
    assert moments.n == len(whole)
    assert abs(moments.mean - whole.double().mean().item()) < 1e-12
    assert abs(moments.std - whole.double().std().item()) < 1e-9


def test_mixture_stats_of_resampled_blocks():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (48000, 2)).astype(np.float32)
    blocks = [x[:10000], x[10000:10001], x[10001:]]
    stats = mixture_stats(blocks, 48000, 44100)
    from separator.inference.audio import resample

    mono = torch.from_numpy(resample(x, 48000, 44100)).mean(1)
    assert stats.frames == 44100
    assert abs(stats.mean.item() - mono.mean().item()) < 1e-6
    assert abs(stats.std.item() - (mono.std().item() + 1e-8)) < 1e-6


def test_nan_output_is_an_error_naming_the_model_and_where():
    """As the overlap-add engine: NaN/inf output is refused, never written."""
    model = separator.load_model(FIXTURES / "htdemucs_4s.th")
    mix = 0.1 * torch.randn(2, 44100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.crosstransformer.layers_t[0].norm_out.bias.fill_(float("nan"))
    message = (
        rf"model {model.model_name} returned NaN or infinite samples at precision fp32, first "
        r"in the chunk at 0.00 s of the input; its weights may hold NaN/inf"
    )
    with pytest.raises(NonFiniteOutputError, match=message):
        separator.separate_tensor(model, mix, shifts=1)
