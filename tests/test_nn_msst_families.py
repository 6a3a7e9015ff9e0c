"""What the MSST families share: safe stem names, and type inference over MSST's configs."""

from __future__ import annotations

import pytest

from separator.errors import ConfigError
from separator.names import safe_name, safe_stem_names
from separator.nn import infer_msst_family, msst_model_section
from separator.nn.family import msst_stems
from tests.msst_families import CONFIGS, msst_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("No Reverb", "no_reverb"),
        ("No Drum-Bass", "no_drum-bass"),
        ("Vocals", "vocals"),
        ("bass+drums", "bass+drums"),
        ("  ..hidden..", "hidden"),
        ("a/../b", "a_._b"),
        ("Männerchor", "m_nnerchor"),
    ],
)
def test_safe_stem_name(name, safe):
    assert safe_name(name, lower=True) == safe
    assert safe_name(name).lower() == safe  # one rule; `lower` only lower-cases


def test_mapping_is_recorded_and_unique():
    assert safe_stem_names(["No Reverb", "no reverb", "", "Reverb"]) == {
        "no_reverb": "No Reverb",
        "no_reverb_2": "no reverb",
        "stem2": "",
        "reverb": "Reverb",
    }


def test_msst_stems_maps_uvr_names():
    config = {"training": {"instruments": ["No Drum-Bass", "Drum-Bass"]}}
    assert msst_stems(config, 2) == ["no_drum-bass", "drum-bass"]
    assert msst_stems({"training": {"target_instrument": "No Reverb"}}, 1) == ["no_reverb"]


# Every MSST config copied for the MSST families, and the family its keys must select.
EXPECTED = {
    "config_musdb18_mdx23c": "mdx23c",
    "config_vocals_mdx23c": "mdx23c",
    "config_musdb18_scnet": "scnet",
    "config_musdb18_scnet_large": "scnet",
    "config_vocals_scnet": "scnet",
    "config_vocals_scnet_large": "scnet",
    "config_musdb18_scnet_tran": "scnet_tran",
    "config_apollo": "apollo",
    "config_dnr_bandit_bsrnn_multi_mus64": "bandit",
    "config_vocals_bandit_bsrnn_multi_mus64": "bandit",
    "config_dnr_bandit_v2_mus64": "bandit_v2",  # its model is in `kwargs:`
    "config_musdb18_bs_roformer": "bs_roformer",
    "config_musdb18_bs_roformer_384_8_2_485100_sage": "bs_roformer",
    "config_musdb18_bs_roformer_with_lora": "bs_roformer",
    "config_vocals_bs_roformer": "bs_roformer",
    "viperx_model_bs_roformer_ep_317_sdr_12.9755": "bs_roformer",
    "config_musdb18_mel_band_roformer": "mel_band_roformer",
    "config_musdb18_mel_band_roformer_all_stems": "mel_band_roformer",
    "config_musdb18_mel_band_roformer_sage": "mel_band_roformer",
    "config_vocals_mel_band_roformer": "mel_band_roformer",
    "config_vocals_mel_band_roformer_kj": "mel_band_roformer",
    "viperx_model_mel_band_roformer_ep_3005_sdr_11.4360": "mel_band_roformer",
    "config_vocals_bs_conformer": "bs_conformer",
    "config_musdb18_mel_band_conformer": "mel_band_conformer",
    "config_musdb18_mel_band_conformer_all_stems": "mel_band_conformer",
    "config_vocals_mel_band_conformer": "mel_band_conformer",
}


def test_every_config_has_an_expected_family():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_inference_picks_one_family(name):
    assert infer_msst_family(msst_model_section(msst_config(name))).name == EXPECTED[name]


@pytest.mark.parametrize(
    "model",
    [
        {"dims": [4, 32], "sr": 44100},  # no family's specific keys
        {"win": 20},
        {"num_subbands": 4},
    ],
)
def test_unclear_configs_are_one_line_errors(model):
    with pytest.raises(ConfigError, match="cannot tell the model type") as err:
        infer_msst_family(model)
    assert "\n" not in str(err.value)


def _tiny_configs():
    from tests import test_nn_apollo, test_nn_mdx23c, test_nn_scnet

    scnet = test_nn_scnet.tiny()
    return [("scnet", scnet), ("scnet_masked", scnet), ("scnet_tran", scnet),
            ("mdx23c", test_nn_mdx23c.tiny()), ("apollo", test_nn_apollo.tiny())]  # fmt: skip


@pytest.mark.parametrize(("family", "config"), _tiny_configs(), ids=[f for f, _ in _tiny_configs()])
def test_trains(family, config):
    """In train mode every parameter MSST trains gets a gradient (phase B trains these)."""
    import torch

    from tests.msst_families import build, card_fields

    module = build(family, card_fields(family, config)).train()
    out = module(torch.randn(2, module.audio_channels, 3000))
    out.square().mean().backward()
    missing = {n for n, p in module.named_parameters() if p.requires_grad and p.grad is None}
    # SCNet_Tran's first_conv is built but never used by MSST either.
    assert missing == ({"first_conv.weight"} if family == "scnet_tran" else set())


def test_a_raw_bandit_v2_yaml_is_read_without_a_model_type():
    """MSST keeps BandIt v2's arguments under `kwargs:` (no `model:`): its type is still found."""
    from separator.files import read_yaml
    from separator.zoo.cards import card_from_msst

    path = CONFIGS / "config_dnr_bandit_v2_mus64.yaml"
    card = card_from_msst(read_yaml(path), path)
    assert (card.architecture, card.sample_rate) == ("bandit_v2", 48000)
