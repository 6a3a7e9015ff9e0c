"""SCNet, scnet_masked and scnet_tran against MSST ccc011a: goldens, MSST's configs, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from separator.errors import ConfigError
from separator.nn import get_family, infer_msst_family
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

FAMILIES = ("scnet", "scnet_masked", "scnet_tran")
GOLDEN = [(f, p) for f in FAMILIES for p in golden_paths(f)]
# MSST's configs of these families, and the family each one is (masked: same keys as scnet).
CONFIGS = {
    "config_musdb18_scnet": ("scnet", "scnet_masked"),
    "config_musdb18_scnet_large": ("scnet",),
    "config_vocals_scnet": ("scnet", "scnet_masked"),
    "config_vocals_scnet_large": ("scnet",),
    "config_musdb18_scnet_tran": ("scnet_tran",),
}


def test_six_golden_cases_present():
    assert len(GOLDEN) == 6


@pytest.mark.parametrize(("family", "path"), GOLDEN, ids=[p.stem for _, p in GOLDEN])
def test_golden_output(family, path):
    out, expected, module = run_golden(family, path)
    assert out.shape == expected.shape  # (b, n, s, time): stem axis and input length, as MSST
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert module.stems == tuple(module.config.sources)
    assert module.audio_channels == expected.shape[2]


@pytest.mark.parametrize(("name", "family"), [(n, f) for n, fams in CONFIGS.items() for f in fams])
def test_msst_config_builds_with_msst_keys(name, family):
    assert meta_keys(family, msst_config(name)) == msst_keys(name, family)


@pytest.mark.parametrize("name", CONFIGS)
def test_type_inferred_from_msst_config(name):
    assert infer_msst_family(msst_config(name)["model"]).name == CONFIGS[name][0]


def test_card_fields_from_msst_config():
    fields = card_fields("scnet", msst_config("config_musdb18_scnet"))
    assert fields["stems"] == ["drums", "bass", "other", "vocals"]
    assert (fields["sample_rate"], fields["chunk_size"]) == (44100, 485100)
    assert fields["model"]["dims"] == [4, 32, 64, 128]


def tiny(**changes) -> dict:
    """A small SCNet config (MSST YAML mapping)."""
    model = dict(sources=["vocals", "other"], audio_channels=2, dims=[4, 6, 8], nfft=512,
                 hop_size=128, win_size=512, num_dplayer=2, conv_depths=[1, 1, 1])  # fmt: skip
    model.update(changes)
    return {"audio": {"sample_rate": 44100, "chunk_size": 4096}, "model": model,
            "training": {"instruments": ["vocals", "other"]}}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [1000, 1024, 1280, 3001])
def test_any_length_comes_back(family, length):
    module = build(family, card_fields(family, tiny())).eval()
    with torch.no_grad():
        out = module(torch.randn(2, 2, length))
    assert out.shape == (2, 2, 2, length)
    assert torch.isfinite(out).all()


def test_uvr_stem_names_are_mapped():
    config = tiny(sources=["No Reverb", "Reverb"])
    config["training"]["instruments"] = ["No Reverb", "Reverb"]
    assert card_fields("scnet", config)["stems"] == ["no_reverb", "reverb"]
    del config["training"]["instruments"]  # falls back on model.sources
    assert card_fields("scnet", config)["stems"] == ["no_reverb", "reverb"]


def test_tuples_as_msst_users_write_them():
    from tests.golden_cases import parse_yaml

    text = "model:\n  dims: !!python/tuple [4, 6, 8]\n  nfft: 512\n  hop_size: 128\n"
    text += "  win_size: 512\n  num_dplayer: 2\n  sources: !!python/tuple [a, b]\n"
    fields = card_fields("scnet", parse_yaml(text))
    assert build("scnet", fields).stems == ("a", "b")


@pytest.mark.parametrize(
    ("changes", "family", "message"),
    [
        ({"num_dplayer": 3}, "scnet", "model.num_dplayer=3 must be even"),
        ({"dims": [2, 6, 8]}, "scnet", "model.dims[0]=2 must be 2 * audio_channels"),
        ({"conv_kernel": 4}, "scnet", "model.conv_kernel=4 must be odd"),
        ({"band_SR": [0.5, 0.6, 0.1]}, "scnet", "model.band_SR"),
        ({"band_stride": [1, 4]}, "scnet", "model.band_stride needs 3 entries"),
        ({"dims": "4,6,8"}, "scnet", "model.dims must be a list of int"),
        ({"nfft": "4096"}, "scnet", "model.nfft must be an integer"),
        ({"sage_attention": False}, "scnet", "unknown key(s) model.sage_attention"),
        ({"tran_depth": 1}, "scnet", "unknown key(s) model.tran_depth"),
        ({"audio_channels": 1, "dims": [2, 6, 8]}, "scnet_masked", "stereo only"),
        ({"win_size": 256}, "scnet_masked", "win_size == model.nfft"),
        ({"tran_rotary_embedding_dim": 80}, "scnet_tran", "tran_rotary_embedding_dim=80"),
    ],
)
def test_bad_configs(changes, family, message):
    with pytest.raises(ConfigError) as err:
        fields = card_fields(family, tiny(**changes))
        build(family, fields)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_channel_count_must_agree():
    config = tiny()
    config["audio"]["num_channels"] = 1
    with pytest.raises(ConfigError, match="audio.num_channels=1 but model.audio_channels=2"):
        card_fields("scnet", config)


def test_stem_count_must_agree():
    config = tiny()
    config["training"]["instruments"] = ["vocals"]
    with pytest.raises(ConfigError, match="training.instruments lists 1 stems"):
        card_fields("scnet", config)


def test_masked_and_plain_share_keys_plain_wins():
    model = copy.deepcopy(tiny()["model"])
    scores = {f: get_family(f).msst_match(model) for f in FAMILIES}
    assert scores["scnet"] > scores["scnet_masked"] > scores["scnet_tran"] > 0
    model["tran_depth"] = 2
    assert infer_msst_family(model).name == "scnet_tran"


def test_unused_first_conv_is_kept_for_strict_loading():
    module = build("scnet_tran", card_fields("scnet_tran", tiny()))
    assert "first_conv.weight" in module.state_dict()
