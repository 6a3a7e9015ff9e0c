"""The Demucs family modules against demucs 4.1.0 (PyPI; a test dependency only).

Golden cases: `tests/fixtures/demucs/<case>.safetensors` are the shared golden files trimmed to
their reference tensors and metadata (`tests/fixtures/demucs/trim_golden.py`); the weights come
from the `<case>.th` packages next to them (fp16, exactly the golden float32 values).
"""

from __future__ import annotations

import json
import random
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from safetensors import safe_open

from separator.errors import ConfigError
from separator.nn import get_family, infer_msst_family
from separator.nn.demucs import (
    FAMILY,
    Demucs,
    DemucsBag,
    HDemucs,
    HTDemucs,
    build,
    from_msst,
    make_model,
    msst_match,
    parse_segment,
)

demucs = pytest.importorskip("demucs")
from demucs.apply import BagOfModels, apply_model  # noqa: E402
from demucs.demucs import Demucs as RefDemucs  # noqa: E402
from demucs.hdemucs import HDemucs as RefHDemucs  # noqa: E402
from demucs.htdemucs import HTDemucs as RefHTDemucs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread

FIXTURES = Path(__file__).parent / "fixtures" / "demucs"
CASES = ["htdemucs_4s", "htdemucs_6s", "hdemucs_v3", "demucs_v2"]
KLASS = {
    "demucs.htdemucs.HTDemucs": "htdemucs",
    "demucs.hdemucs.HDemucs": "hdemucs",
    "demucs.demucs.Demucs": "demucs",
}


def reference_tensors(case: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / f"{case}.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def card_model(meta: dict[str, str]) -> dict:
    """The card `model:` mapping of a golden case (its kwargs JSON, fractions HF-encoded)."""
    return {"klass": KLASS[meta["class"]], "kwargs": json.loads(meta["kwargs"])}


# --- golden cases --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_golden_forward_from_state_dict(case):
    from separator.zoo.demucs import read_package

    tensors, meta = reference_tensors(case)
    model = build(card_model(meta))  # the family's builder, from the card mapping
    model.load_state_dict(read_package(FIXTURES / f"{case}.th").state, strict=True)
    with torch.no_grad():
        out = model.eval()(tensors["__input__"])
    assert out.shape == tensors["__output__"].shape
    torch.testing.assert_close(out, tensors["__output__"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_golden_forward_from_package(case):
    from separator.zoo.demucs import load_package

    tensors, meta = reference_tensors(case)
    model = load_package(FIXTURES / f"{case}.th")
    with torch.no_grad():
        out = model(tensors["__input__"])
    torch.testing.assert_close(out, tensors["__output__"], atol=1e-5, rtol=0)
    assert model.chunk_size == int(meta["segment_length"]) == tensors["__input__"].shape[-1]


def test_build_sets_engine_attributes():
    _, meta = reference_tensors("htdemucs_4s")
    model = FAMILY.build(card_model(meta), sample_rate=44100, stems=None, chunk_size=None)
    assert isinstance(model, HTDemucs)
    assert model.stems == ("drums", "bass", "other", "vocals")
    assert (model.sample_rate, model.audio_channels, model.chunk_size) == (44100, 2, 8820)
    assert model.segment == Fraction(1, 5) and model.samplerate == 44100
    with pytest.raises(ConfigError, match="differ from the model's sources"):
        build(card_model(meta), stems=["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="training length 8820"):
        build(card_model(meta), chunk_size=44100)
    with pytest.raises(ConfigError, match="samplerate"):
        build(card_model(meta), sample_rate=48000)


# --- segment and training length ----------------------------------------------------------------
def test_training_length_uses_python_semantics():
    def length(segment):
        model = build({"klass": "htdemucs", "kwargs": dict(TINY_HT, segment=segment)})
        return model.chunk_size, model.training_length, model.segment

    assert length(0.7) == (30869, 30869, 0.7)  # 0.7 * 44100 = 30869.999...
    assert length(Fraction(7, 10)) == (30870, 30870, Fraction(7, 10))
    assert length("7/10")[0] == 30870
    assert length({"_type": "fraction", "numerator": 7, "denominator": 10})[0] == 30870
    assert length(1)[0] == 44100
    for bad in (0, -1.0, True, "soon", [1]):
        with pytest.raises(ConfigError, match="segment"):
            parse_segment(bad)


TINY_HT = dict(sources=["a", "b"], channels=8, nfft=512, depth=3, t_layers=2, t_heads=2)


def test_htdemucs_pads_short_inputs_to_the_training_length():
    ref = RefHTDemucs(**dict(TINY_HT, segment=0.1)).eval()
    ours = HTDemucs(**dict(TINY_HT, segment=0.1)).eval()
    ours.load_state_dict(ref.state_dict())
    mix = torch.randn(1, 2, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        padded = ours(mix)
        torch.testing.assert_close(padded, ref(mix), atol=1e-5, rtol=0)
        ours.use_train_segment = False  # MSST's behaviour: run at the input's length
        plain = ours(mix)
    assert padded.shape == plain.shape == (1, 2, 2, 3000)
    assert (padded - plain).abs().max() > 1e-3
    ours.use_train_segment = True
    with pytest.raises(ValueError, match="longer than training length 4410"):
        ours(torch.zeros(1, 2, 4411))


# --- constructor arguments -----------------------------------------------------------------------
def test_unknown_kwargs_are_dropped_with_a_warning_naming_them():
    with pytest.warns(UserWarning, match="num_subbands, foo"):
        model = make_model("htdemucs", dict(TINY_HT, num_subbands=1, foo=2))
    assert isinstance(model, HTDemucs)


@pytest.mark.parametrize(
    ("klass", "kwargs", "message"),
    [
        ("htdemucs", {"channels": 8}, "sources must be a non-empty list"),
        ("htdemucs", dict(TINY_HT, sources="ab"), "sources must be a non-empty list"),
        ("htdemucs", dict(TINY_HT, channels=-1), "channels must be a positive integer"),
        ("htdemucs", dict(TINY_HT, t_heads=3), "not divisible by t_heads=3"),
        ("htdemucs", dict(TINY_HT, t_sparse_self_attn=True), "xformers"),
        ("htdemucs", dict(TINY_HT, depth=4), "transformer needs frequencies"),
        ("htdemucs", dict(TINY_HT, wiener_iters=1), "wiener_iters == end_iters"),
        ("htdemucs", dict(TINY_HT, t_emb="rope"), "t_emb='rope'"),
        ("hdemucs", {"sources": ["a"], "hybrid": False, "hybrid_old": True}, "hybrid_old"),
        ("hdemucs", {"sources": ["a"], "depth": 3}, "cannot merge"),
        ("hdemucs", {"sources": ["a"], "nfft": 512, "depth": 4}, "hop 128"),
        ("demucs", {"sources": ["a"], "channels": 4, "kernel_size": 2, "stride": 4}, "stride"),
        ("wavenet", {"sources": ["a"]}, "unknown klass 'wavenet'"),
        ("demucs", {"sources": ["a"], "segment": -2}, "segment"),
    ],
)
def test_bad_kwargs_are_config_errors(klass, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_model(klass, kwargs)


# --- property tests against demucs ---------------------------------------------------------------
def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights large enough that every branch matters (demucs's init hides some at 1e-4)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale"):
                p.fill_(1.0)
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) / max(1, p[0].numel()) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def _compare(ours_cls, ref_cls, kwargs: dict, length: int, draw_seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # demucs/torch init warnings on tiny shapes
        ref = ref_cls(**kwargs).eval()
        ours = ours_cls(**kwargs).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys, same order
    _randomize(ref, torch.Generator().manual_seed(draw_seed))
    ours.load_state_dict(ref.state_dict(), strict=True)
    channels = kwargs.get("audio_channels", 2)
    mix = 0.3 * torch.randn(2, channels, length, generator=torch.Generator().manual_seed(draw_seed))
    with torch.no_grad():
        state = random.getstate()  # HTDemucs draws from Python's `random` on every forward
        expected = ref(mix)
        random.setstate(state)
        actual = ours(mix)
    assert actual.shape == expected.shape == (2, len(kwargs["sources"]), channels, length)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


PROPERTY = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def htdemucs_configs(draw):
    nfft = draw(st.sampled_from([256, 512]))
    depth = 2 if nfft == 256 else draw(st.sampled_from([2, 3]))
    heads = draw(st.sampled_from([1, 2, 4]))
    kwargs = dict(
        sources=["a", "b", "c"][: draw(st.integers(1, 3))],
        audio_channels=draw(st.sampled_from([1, 2])),
        channels=8,
        nfft=nfft,
        depth=depth,
        cac=draw(st.booleans()),
        dconv_mode=draw(st.integers(0, 3)),
        dconv_comp=draw(st.sampled_from([2, 4])),
        bottom_channels=draw(st.sampled_from([0, 8, 12])),
        t_layers=draw(st.integers(0, 3)),
        t_heads=heads,
        t_emb=draw(st.sampled_from(["sin", "cape", "scaled"])),
        t_norm_first=draw(st.booleans()),
        t_layer_scale=draw(st.booleans()),
        t_cross_first=draw(st.booleans()),
        t_gelu=draw(st.booleans()),
        multi_freqs=draw(st.sampled_from([None, [0.3]])),
        segment=draw(st.sampled_from([0.05, Fraction(1, 20), 0.07])),
        use_train_segment=draw(st.booleans()),
    )
    if not kwargs["cac"]:
        kwargs["wiener_iters"] = kwargs["end_iters"] = draw(st.sampled_from([-1, 0, 1]))
    train = int(kwargs["segment"] * 44100)
    length = draw(st.integers(train // 3, train))  # shorter than (or equal to) the segment
    return kwargs, length


@seed(20240601)
@PROPERTY
@given(htdemucs_configs(), st.integers(0, 2**16))
def test_htdemucs_matches_demucs(config, draw_seed):
    kwargs, length = config
    _compare(HTDemucs, RefHTDemucs, kwargs, length, draw_seed)


@st.composite
def hdemucs_configs(draw):
    nfft = draw(st.sampled_from([64, 256]))  # hop = 4^k, as the time branch needs
    hybrid = draw(st.booleans())
    merge_depth = 2 if nfft == 64 else 3  # layers until the bins reach one
    depth = draw(st.integers(merge_depth, merge_depth + 1)) if hybrid else draw(st.integers(2, 4))
    kwargs = dict(
        sources=["a", "b"][: draw(st.integers(1, 2))],
        channels=4,
        nfft=nfft,
        depth=depth,
        hybrid=hybrid,
        hybrid_old=hybrid and draw(st.booleans()),
        cac=draw(st.booleans()),
        dconv_mode=draw(st.integers(1, 3)),
        dconv_comp=2,
        dconv_lstm=draw(st.sampled_from([0, 2, 9])),  # from layer 0: > 200 frames there
        dconv_attn=draw(st.sampled_from([2, 9])),
        norm_starts=draw(st.sampled_from([2, 9])),
        # split bands only where layers 0 and 1 are padded frequency layers (MultiWrap's rule)
        multi_freqs=draw(st.sampled_from([None, [0.25, 0.5]])) if nfft == 256 else None,
        freq_emb=draw(st.sampled_from([0.0, 0.2])),
        context_enc=draw(st.integers(0, 1)),
        rewrite=draw(st.booleans()),
    )
    if not kwargs["cac"]:
        iters = draw(st.sampled_from([-1, 0, 1, 2]))
        kwargs.update(wiener_iters=iters, end_iters=iters, wiener_residual=draw(st.booleans()))
    # > 200 steps for the layer-0 BLSTMs: 207+ frames at hop 16, 825+ samples / 4 in time
    return kwargs, draw(st.integers(3300, 3600))


@seed(20240602)
@PROPERTY
@given(hdemucs_configs(), st.integers(0, 2**16))
def test_hdemucs_matches_demucs(config, draw_seed):
    kwargs, length = config
    _compare(HDemucs, RefHDemucs, kwargs, length, draw_seed)


@st.composite
def demucs_configs(draw):
    glu = draw(st.booleans())
    kwargs = dict(
        sources=["a", "b"][: draw(st.integers(1, 2))],
        audio_channels=draw(st.sampled_from([1, 2])),
        channels=4,
        depth=draw(st.integers(1, 3)),
        kernel_size=draw(st.sampled_from([4, 8])),
        stride=draw(st.sampled_from([2, 4])),
        context=draw(st.integers(0, 2)),
        rewrite=draw(st.booleans()),
        glu=glu,
        gelu=draw(st.booleans()),
        lstm_layers=draw(st.integers(0, 2)),
        norm_starts=draw(st.sampled_from([0, 9])),
        norm_groups=2,
        dconv_mode=draw(st.integers(0, 3)),
        dconv_comp=1,
        dconv_attn=draw(st.sampled_from([1, 9])),
        dconv_lstm=draw(st.sampled_from([0, 9])),
        normalize=draw(st.booleans()),
        resample=draw(st.booleans()),
    )
    return kwargs, draw(st.integers(1200, 2000))  # > 200 steps in the first layer's BLSTM


@seed(20240603)
@PROPERTY
@given(demucs_configs(), st.integers(0, 2**16))
def test_waveform_demucs_matches_demucs(config, draw_seed):
    kwargs, length = config
    _compare(Demucs, RefDemucs, kwargs, length, draw_seed)


def test_default_structure_matches_demucs():
    """Default constructors (the released structure; only the width made small) build the same
    keys, shapes and order as demucs's."""
    for ours, ref in ((HTDemucs, RefHTDemucs), (HDemucs, RefHDemucs), (Demucs, RefDemucs)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = ours(["a", "b"], channels=8, rescale=0).state_dict()
            b = ref(["a", "b"], channels=8, rescale=0).state_dict()
        assert list(a) == list(b)
        assert all(a[k].shape == b[k].shape for k in a)


def test_demucs_loads_pre_v3_key_names():
    model = Demucs(["a"], channels=4, depth=2, dconv_mode=0)
    state = model.state_dict()
    old = {
        k.replace(".3.", ".2.") if k.startswith(("encoder.", "decoder.")) else k: v
        for k, v in state.items()
    }
    assert old != state
    model.load_state_dict(old, strict=True)


# --- bags ----------------------------------------------------------------------------------------
def test_bag_forward_equals_apply_model_without_split():
    """At a length every member runs as is (HDemucs: any; Demucs: a valid_length, else
    apply_model widens the chunk and the model's normalisation sees the widening), the bag's
    forward is what demucs's apply_model(split=False, shifts=0) computes for a bag."""
    from separator.zoo.demucs import load_bag, read_package

    ours = load_bag(FIXTURES / "bag_small.yaml")
    refs = []
    for name, cls in (("bagsmall0-93d35b6d.th", RefHDemucs), ("bagsmall1-363ad47b.th", RefDemucs)):
        pkg = read_package(FIXTURES / name)
        refs.append(cls(**pkg.kwargs))
        refs[-1].load_state_dict(pkg.state)
    bag = BagOfModels(refs, ours.weights, 0.2)
    length = ours.models[1].valid_length(9000)
    assert length != 9000 and ours.models[1].valid_length(length) == length
    mix = 0.1 * torch.randn(1, 2, length, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = apply_model(bag, mix, shifts=0, split=False)
        actual = ours(mix)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert ours.chunk_size == 8820 and [m.segment for m in ours.models] == [0.2, 0.2]


@pytest.mark.parametrize("bag_segment", [0.05, 0.1, 0.2])
def test_bag_segment_override_follows_demucs_4_1_0(bag_segment):
    def members(ht, h, d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [
                ht(**dict(TINY_HT, segment=0.1)),
                h(["a", "b"], channels=4, segment=0.1),
                d(["a", "b"], channels=4, depth=2, segment=0.1),
            ]

    ours = DemucsBag(members(HTDemucs, HDemucs, Demucs), segment=bag_segment)
    ref = BagOfModels(members(RefHTDemucs, RefHDemucs, RefDemucs), segment=bag_segment)
    assert [m.segment for m in ours.models] == [m.segment for m in ref.models]
    assert ours.max_allowed_segment == ref.max_allowed_segment
    assert ours.weights == ref.weights


def test_bag_config_errors():
    a = HDemucs(["a", "b"], channels=4)
    with pytest.raises(ConfigError, match="2 lists of 2 numbers"):
        DemucsBag([a, HDemucs(["a", "b"], channels=4)], weights=[[1, 1]])
    with pytest.raises(ConfigError, match="all zero"):
        DemucsBag([a], weights=[[1, 0]])
    with pytest.raises(ConfigError, match="differ in sources"):
        DemucsBag([a, HDemucs(["a", "c"], channels=4)])
    with pytest.raises(ConfigError, match="unknown key"):
        build({"models": [], "weight": []})


# --- MSST ----------------------------------------------------------------------------------------
MSST_YAML = {
    "audio": {"chunk_size": 8820},
    "training": {
        "instruments": ["drums", "bass", "other", "vocals"],
        "channels": 2,
        "samplerate": 44100,
        "segment": 0.2,
    },
    "model": "htdemucs",
    "htdemucs": {
        "channels": 4,
        "num_subbands": 1,
        "dconv_comp": 4,
        "bottom_channels": 40,
        "t_layers": 3,
        "t_heads": 8,
        "dconv_mode": 3,
        "t_dropout": 0.02,
        "channels_time": None,
        "t_lr": None,
        "multi_freqs": [],
    },
}


def test_from_msst_translates_the_htdemucs_section():
    card = from_msst(MSST_YAML)
    kwargs = card["model"]["kwargs"]
    assert card["model"]["klass"] == "htdemucs"
    assert kwargs["use_train_segment"] is False and "num_subbands" not in kwargs
    assert kwargs["sources"] == card["stems"] == ["drums", "bass", "other", "vocals"]
    assert (card["sample_rate"], card["chunk_size"]) == (44100, 8820)
    explicit = dict(MSST_YAML, htdemucs=dict(MSST_YAML["htdemucs"], use_train_segment=True))
    assert from_msst(explicit)["model"]["kwargs"]["use_train_segment"] is True
    model = get_family("htdemucs").build(
        card["model"], sample_rate=44100, stems=card["stems"], chunk_size=8820
    )
    assert isinstance(model, HTDemucs) and model.use_train_segment is False
    with pytest.raises(ConfigError, match="num_subbands=2"):
        from_msst(dict(MSST_YAML, htdemucs=dict(MSST_YAML["htdemucs"], num_subbands=2)))
    with pytest.raises(ConfigError, match="training.segment"):
        from_msst(
            dict(MSST_YAML, training={"instruments": ["a"], "channels": 2, "samplerate": 44100})
        )


def test_msst_type_inference_finds_htdemucs():
    assert infer_msst_family("htdemucs").name == "htdemucs"  # MSST's `model: htdemucs`
    assert infer_msst_family(MSST_YAML).name == "htdemucs"  # the whole YAML
    assert msst_match({"dim": 384, "depth": 6}) == 0
    assert get_family("htdemucs").checkpoint_format == "demucs"
    assert get_family("demucs").checkpoint_format == "demucs"
