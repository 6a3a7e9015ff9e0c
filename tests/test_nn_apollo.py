"""Apollo against MSST ccc011a: golden outputs, MSST's config, card fields, errors."""

from __future__ import annotations

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

GOLDEN = golden_paths("apollo")


def test_two_golden_cases_present():
    assert len(GOLDEN) == 2


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_output(path):
    out, expected, module = run_golden("apollo", path)
    # MSST returns (b, s, time): no stem axis. Ours always has it: one stem, `restored`.
    assert out.shape == (expected.shape[0], 1, *expected.shape[1:])
    torch.testing.assert_close(out[:, 0], expected, atol=1e-5, rtol=0)
    assert module.stems == ("restored",)
    assert module.audio_channels == expected.shape[1]


def test_msst_config_builds_with_msst_keys():
    assert meta_keys("apollo", msst_config("config_apollo")) == msst_keys("config_apollo", "apollo")


def test_type_inferred_from_msst_config():
    assert infer_msst_family(msst_config("config_apollo")["model"]).name == "apollo"


def test_card_fields():
    fields = card_fields("apollo", msst_config("config_apollo"))
    assert fields["model"] == {"sr": 44100, "win": 20, "feature_dim": 256, "layer": 6,
                               "audio_channels": 2}  # fmt: skip
    assert fields["stems"] == ["restored"]
    assert (fields["sample_rate"], fields["chunk_size"]) == (44100, 132300)


def tiny(**changes) -> dict:
    model = {"sr": 16000, "win": 20, "feature_dim": 16, "layer": 1}
    model.update(changes)
    return {"audio": {"sample_rate": model["sr"], "num_channels": 1}, "model": model}


def test_stem_defaults_to_restored_and_channels_come_from_audio():
    fields = card_fields("apollo", tiny())
    assert fields["stems"] == ["restored"] and fields["model"]["audio_channels"] == 1
    module = build("apollo", fields).eval()
    with torch.no_grad():
        out = module(torch.randn(1, 1, 2000))
    assert out.shape == (1, 1, 1, 2000)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"feature_dim": 24}, "model.feature_dim=24 must be a multiple of 16"),
        ({"win": 5}, "too few for 80 bands"),
        ({"layer": -1}, "model.layer must be >= 0"),
        ({"heads": 8}, "unknown key(s) model.heads"),
        ({"sr": "44100"}, "model.sr must be an integer"),
    ],
)
def test_bad_configs(changes, message):
    config = tiny(**changes)
    config["audio"]["sample_rate"] = 16000
    with pytest.raises(ConfigError) as err:
        build("apollo", card_fields("apollo", config))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_rate_must_match_model_sr():
    config = tiny()
    config["audio"]["sample_rate"] = 44100
    with pytest.raises(ConfigError, match="audio.sample_rate=44100 but model.sr=16000"):
        card_fields("apollo", config)
