"""MDX23C (TFC-TDF v3) against MSST ccc011a: golden outputs, MSST's configs, card fields, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from separator.errors import ConfigError
from separator.nn import infer_msst_family
from tests.msst_families import (
    build,
    card_fields,
    golden_paths,
    meta_keys,
    msst_config,
    msst_keys,
    run_golden,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread

GOLDEN = golden_paths("mdx23c")
CONFIGS = ("config_musdb18_mdx23c", "config_vocals_mdx23c")


def test_two_golden_cases_present():
    assert len(GOLDEN) == 2


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_output(path):
    # The inputs are MSST chunks (hop·(dim_t − 1) samples), where MSST returns the input's length.
    out, expected, module = run_golden("mdx23c", path)
    assert out.shape == expected.shape  # (b, n, s, time); one target_instrument keeps n = 1
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert len(module.stems) == expected.shape[1]


def test_target_instrument_gives_one_stem():
    case = next(p for p in GOLDEN if "target" in p.stem)
    from tests.golden_cases import load_case

    fields = card_fields("mdx23c", load_case(case).config)
    assert fields["stems"] == ["vocals"]


@pytest.mark.parametrize("name", CONFIGS)
def test_msst_config_builds_with_msst_keys(name):
    assert meta_keys("mdx23c", msst_config(name)) == msst_keys(name, "mdx23c")


@pytest.mark.parametrize("name", CONFIGS)
def test_type_inferred_from_msst_config(name):
    assert infer_msst_family(msst_config(name)["model"]).name == "mdx23c"


def test_card_model_mapping():
    fields = card_fields("mdx23c", msst_config("config_musdb18_mdx23c"))
    assert fields["model"] == {
        "act": "gelu", "bottleneck_factor": 4, "growth": 128, "norm": "InstanceNorm",
        "num_blocks_per_scale": 2, "num_channels": 128, "num_scales": 5, "num_subbands": 4,
        "scale": [2, 2], "n_fft": 8192, "hop_length": 1024, "dim_f": 4096, "audio_channels": 2,
    }  # fmt: skip
    assert fields["stems"] == ["vocals", "bass", "drums", "other"]
    assert (fields["sample_rate"], fields["chunk_size"]) == (44100, 261120)


def tiny(channels: int = 2, **changes) -> dict:
    model = dict(act="gelu", bottleneck_factor=2, growth=2, norm="InstanceNorm",
                 num_blocks_per_scale=1, num_channels=4, num_scales=2, num_subbands=2,
                 scale=[2, 2])  # fmt: skip
    model.update(changes)
    audio = dict(n_fft=256, hop_length=64, dim_f=64, dim_t=16, num_channels=channels,
                 sample_rate=44100, chunk_size=960)  # fmt: skip
    return {"audio": audio, "model": model, "training": {"instruments": ["vocals", "other"]}}


@pytest.mark.parametrize("length", [960, 1000, 100, 4097])
def test_any_length_comes_back(length):
    module = build("mdx23c", card_fields("mdx23c", tiny())).eval()
    with torch.no_grad():
        out = module(torch.randn(1, 2, length))
    assert out.shape == (1, 2, 2, length)
    assert torch.isfinite(out).all()


def test_mono_works():
    module = build("mdx23c", card_fields("mdx23c", tiny(channels=1))).eval()
    x = torch.randn(2, 1, 960)
    with torch.no_grad():
        out = module(x)
    assert out.shape == (2, 2, 1, 960)
    with torch.no_grad():  # batch items are independent (MSST's mono reshape mixed them up)
        torch.testing.assert_close(module(x[1:]), out[1:], atol=1e-5, rtol=0)


def test_extra_keys_warn_once_and_leave_the_card():
    config = tiny(dropout=0.1, mlp=True)  # keys MSST's TFC_TDF_net does not read
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fields = card_fields("mdx23c", config)
        build("mdx23c", fields)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "dropout, mlp" in messages[0]
    assert "dropout" not in fields["model"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"act": "swish"}, "model.act='swish'"),
        ({"act": "elu"}, "model.act='elu'"),
        ({"norm": "GroupNormX"}, "model.norm='GroupNormX'"),
        ({"num_scales": 6}, "scale[1]^num_scales"),
        ({"scale": [2]}, "model.scale must be two positive integers"),
        ({"growth": "2"}, "model.growth must be an integer"),
        ({"bottleneck_factor": 64}, "model.bottleneck_factor=64"),
    ],
)
def test_bad_configs(changes, message):
    with pytest.raises(ConfigError) as err:
        build("mdx23c", card_fields("mdx23c", tiny(**changes)))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_audio_field():
    config = tiny()
    del config["audio"]["dim_f"]
    with pytest.raises(ConfigError, match=r"mdx23c reads audio.dim_f"):
        card_fields("mdx23c", config)
