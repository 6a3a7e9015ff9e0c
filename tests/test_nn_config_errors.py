"""Bad model configurations and mismatched inputs raise `ConfigError` (never a bare ValueError)
with a one-line message that names the field: band layouts, mel bands, mask estimators, the
STFT's normalisation, family records, and the channel count a model was built for."""

from __future__ import annotations

import pytest
import torch

from separator.errors import ConfigError
from separator.nn import get_family
from separator.nn.bands import MaskEstimator, check_bs_bands, mel_band_matrix
from separator.nn.family import Family
from separator.nn.stft import stft
from tests import test_nn_mdx23c, test_nn_scnet

STFT = dict(stft_n_fft=256, stft_hop_length=64, stft_win_length=256)
BANDS = [2] * 8 + [4] * 8 + [8] * 4 + [16, 33]  # 129 bins: n_fft 256


def one_line(err: pytest.ExceptionInfo) -> str:
    assert type(err.value) is ConfigError
    message = str(err.value)
    assert "\n" not in message
    return message


def roformer(family: str, **model) -> torch.nn.Module:
    model = dict(dim=8, depth=1, heads=2, dim_head=8, **STFT) | model
    return get_family(family).build(model, sample_rate=44100, stems=["a"], chunk_size=4096)


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ([129], "model.freqs_per_bands needs at least 2 bands"),
        ([130, -1], "model.freqs_per_bands must be positive"),
        ([64, 64], "sum of model.freqs_per_bands is 128 but stft_n_fft=256 gives 129 bins"),
    ],
)
def test_bs_band_layouts(bands, message):
    with pytest.raises(ConfigError) as err:
        check_bs_bands(bands, 256)
    assert message in one_line(err)
    with pytest.raises(ConfigError) as err:  # the same through the family
        roformer("bs_roformer", freqs_per_bands=bands)
    assert message in one_line(err)


def test_too_many_mel_bands():
    with pytest.raises(ConfigError) as err:
        mel_band_matrix(44100, 256, 120)
    assert "model.num_bands=120 is too many for stft_n_fft=256: empty bands" in one_line(err)
    with pytest.raises(ConfigError) as err:
        roformer("mel_band_roformer", num_bands=120)
    assert "model.num_bands=120" in one_line(err)
    with pytest.raises(ConfigError) as err:
        mel_band_matrix(44100, 256, 8, edges="middle")
    assert "mel band edges must be 'forced' or 'neighbour'" in one_line(err)


def test_mask_estimator_needs_a_layer():
    with pytest.raises(ConfigError) as err:
        MaskEstimator(8, [4, 4], 0, 1)
    assert "model.mask_estimator_depth is too small" in one_line(err)


def test_stft_normalisation_names():
    with pytest.raises(ConfigError) as err:
        stft(torch.zeros(1, 512), n_fft=256, hop_length=64, normalized="frame")
    assert "STFT normalized must be False, True or 'window', got 'frame'" in one_line(err)


def test_family_record_checkpoint_format():
    with pytest.raises(ConfigError) as err:
        Family(name="x", build=lambda *a, **k: None, checkpoint_format="onnx")
    assert "family x: unknown checkpoint_format 'onnx'" in one_line(err)


def _scnet() -> torch.nn.Module:
    fields = get_family("scnet").from_msst(test_nn_scnet.tiny())
    return get_family("scnet").build(
        fields["model"], sample_rate=44100, stems=fields["stems"], chunk_size=4096
    )


def _mdx23c() -> torch.nn.Module:
    fields = get_family("mdx23c").from_msst(test_nn_mdx23c.tiny())
    return get_family("mdx23c").build(
        fields["model"], sample_rate=44100, stems=fields["stems"], chunk_size=960
    )


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: roformer("bs_roformer", freqs_per_bands=BANDS), "model.stereo"),
        (lambda: roformer("mel_band_roformer", num_bands=8), "model.stereo"),
        (_scnet, "model.audio_channels"),
        (_mdx23c, "model.audio_channels"),
    ],
    ids=["bs_roformer", "mel_band_roformer", "scnet", "mdx23c"],
)
def test_channel_count_must_match_the_config(make, field):
    model = make().eval()
    wrong = 1 if model.audio_channels == 2 else 2
    with pytest.raises(ConfigError) as err, torch.no_grad():
        model(torch.zeros(1, wrong, 2048))
    message = one_line(err)
    assert f"model expects {model.audio_channels} audio channel(s) ({field}), got {wrong}" in (
        message
    )
