"""BandIt (`bandit`) and BandIt v2 (`bandit_v2`): MSST ccc011a golden outputs, MSST's real configs
built on the meta device against MSST's own key set, type inference, config errors, and the
batched/fused code paths against their per-band / per-step definitions."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from golden_cases import FIXTURES, load_case
from hypothesis import given, settings
from hypothesis import strategies as st

from separator.errors import ConfigError
from separator.files import parse_yaml
from separator.nn import bandit, bandit_v2, recurrent
from separator.nn.bandit import BanditCore
from separator.nn.bandit_v2 import BanditV2Core
from separator.nn.bsrnn import BandLayout, CoreConfig, card_stems, musical_layout, vocal_layout
from separator.nn.recurrent import ResidualRNN, Workspace, run_seqband
from separator.nn.registry import get_family, infer_msst_family
from separator.nn.stft import istft, stft

GOLDEN = sorted((FIXTURES / "bandit").glob("*.safetensors")) + sorted(
    (FIXTURES / "bandit_v2").glob("*.safetensors")
)
CONFIGS = FIXTURES / "msst_configs"
REAL = {
    "config_dnr_bandit_bsrnn_multi_mus64.yaml": ("bandit", 44100, 264600),
    "config_vocals_bandit_bsrnn_multi_mus64.yaml": ("bandit", 44100, 264600),
    "config_dnr_bandit_v2_mus64.yaml": ("bandit_v2", 48000, 384000),
}


def model_section(config: dict) -> dict:
    """Where MSST keeps the model: `model:` (v1) or `kwargs:` (v2)."""
    return config.get("model") or config.get("kwargs") or {}


def build_from_msst(config: dict, family: str | None = None):
    fam = get_family(family) if family else infer_msst_family(model_section(config))
    card = fam.from_msst(config)
    module = fam.build(
        card["model"],
        sample_rate=card["sample_rate"],
        stems=card["stems"],
        chunk_size=card["chunk_size"],
    )
    return fam, card, module


# --- golden cases ------------------------------------------------------------------------------
def test_golden_cases_are_there():
    assert [p.name for p in GOLDEN] == [
        "bandit_2stem_lstm_mono.safetensors",
        "bandit_3stem_gru.safetensors",
        "bandit_v2_2stem_lstm_mono.safetensors",
        "bandit_v2_3stem_gru.safetensors",
    ]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_output_reproduced(path):
    case = load_case(path)
    fam, _, model = build_from_msst(case.config, case.meta["family"])
    assert fam.name == case.meta["family"]
    model.load_state_dict(case.state, strict=True)
    model.eval()
    x, expected = case.tensors["input"], case.tensors["output"]
    with torch.inference_mode():
        y = model(x)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    assert model.audio_channels == x.shape[1]
    assert len(model.stems) == y.shape[1]


def test_golden_v2_runs_at_the_audio_rate():
    """The real v2 layout: 48 kHz audio; the bands use the class default fs 44100, which gives
    the same bins (musical bands scale with fs as long as fs / n_fft >= 8.18 Hz)."""
    case = load_case(FIXTURES / "bandit_v2" / "bandit_v2_3stem_gru.safetensors")
    _, card, model = build_from_msst(case.config, "bandit_v2")
    assert card["sample_rate"] == model.sample_rate == 48000
    assert model.stems == ("dialog", "music", "effects")  # speech / music / sfx in the config
    assert model.config.fs == 44100
    assert model.layout.bands == musical_layout(512, 48000, 16).bands
    assert musical_layout(8192, 44100, 64).bands != musical_layout(8192, 88200, 64).bands


def test_golden_v1_ignores_config_stft():
    """Case 2 asks for hop 256, win 1024, no normalisation and reflect padding; MSST ignores
    them, so the stored output is reproduced with the fixed 2048/512 torchaudio STFT."""
    case = load_case(FIXTURES / "bandit" / "bandit_2stem_lstm_mono.safetensors")
    model_cfg = case.config["model"]
    assert (model_cfg["hop_length"], model_cfg["normalized"]) == (256, False)
    assert bandit.STFT.hop_length == 512 and bandit.STFT.normalized == "window"


# --- MSST's real configs -----------------------------------------------------------------------
def msst_keys() -> dict:
    with gzip.open(CONFIGS / "msst_keys.json.gz", "rt") as f:
        return json.load(f)["configs"]


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_builds_on_meta_with_msst_keys(name):
    family, rate, chunk = REAL[name]
    config = parse_yaml((CONFIGS / name).read_text(), name)
    with torch.device("meta"):
        fam, _, model = build_from_msst(config)
    assert fam.name == family
    assert (model.sample_rate, model.chunk_size, model.audio_channels) == (rate, chunk, 2)
    expected = msst_keys()[name]
    ours = {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    }
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    assert all(t.is_meta for t in model.state_dict().values())


def test_real_config_stems_and_card_model():
    config = parse_yaml((CONFIGS / "config_dnr_bandit_v2_mus64.yaml").read_text())
    card = bandit_v2.from_msst(config)
    assert card["stems"] == ["dialog", "music", "effects"]
    assert card["model"] == {**config["kwargs"], "audio_channels": 2}
    config = parse_yaml((CONFIGS / "config_vocals_bandit_bsrnn_multi_mus64.yaml").read_text())
    card = bandit.from_msst(config)
    assert card["stems"] == ["vocals", "other"]
    assert card["model"] == {**config["model"], "audio_channels": 2}


# --- type inference and config errors ----------------------------------------------------------
def test_type_inference():
    for name, (family, _, _) in REAL.items():
        config = parse_yaml((CONFIGS / name).read_text())
        assert infer_msst_family(model_section(config)).name == family
    roformer = {"dim": 64, "depth": 4, "freqs_per_bands": [1025]}
    assert infer_msst_family(roformer).name == "bs_roformer"
    assert bandit.msst_match(roformer) == bandit_v2.msst_match(roformer) == 0
    v1 = model_section(
        parse_yaml((CONFIGS / "config_dnr_bandit_bsrnn_multi_mus64.yaml").read_text())
    )
    assert get_family("bs_roformer").msst_match(v1) == 0
    assert bandit_v2.msst_match(v1) == 0
    assert bandit.msst_match({"in_channels": 1, "stems": ["a"]}) == 0  # v2's spelling


def v1_config(**model):
    base = dict(in_channel=1, stems=["speech", "music"], band_specs="musical", n_bands=8)
    base.update(model)
    return {"model": base, "training": {"instruments": list(base["stems"])}}


def v2_config(**kwargs):
    base = dict(in_channels=1, stems=["speech", "sfx"], n_bands=8, n_fft=512, win_length=512)
    base.update(hop_length=128)
    base.update(kwargs)
    return {"kwargs": base, "audio": {"sample_rate": 48000}}


@pytest.mark.parametrize(
    "family, config, match",
    [
        ("bandit", v1_config(n_fft=4096), "model.n_fft must be 2048"),
        ("bandit", v1_config(in_channel=2), "model.in_channel must be 1"),
        ("bandit", v1_config(foo=1), "unknown key model.foo"),
        ("bandit", v1_config(mult_add_mask=True), "MultAddMaskEstimationModule"),
        ("bandit", v1_config(band_specs="bark"), "not supported"),
        ("bandit", v1_config(band_specs="dnr:nonsense"), "unknown to MSST"),
        ("bandit", v1_config(n_bands=None), "model.n_bands"),
        ("bandit", v1_config(rnn_type="Transformer"), "model.rnn_type"),
        ("bandit", v1_config(hidden_activation="Softmax"), "not supported"),
        ("bandit", v1_config(hidden_activation="Nope"), "not a torch.nn activation"),
        ("bandit", v1_config(normalize_channel_independently=True), "not implemented"),
        ("bandit", {"model": {"in_channel": 1}}, "bad model section"),
        ("bandit", {**v1_config(), "training": {"instruments": ["a"]}}, "training.instruments"),
        ("bandit", {**v1_config(), "audio": {"num_channels": 0}}, "audio.num_channels"),
        ("bandit_v2", {"model": v2_config()["kwargs"]}, "kwargs:"),
        ("bandit_v2", v2_config(band_type="mel"), "kwargs.band_type"),
        ("bandit_v2", v2_config(power=2), "kwargs.power"),
        ("bandit_v2", v2_config(window_fn="rect"), "kwargs.window_fn"),
        ("bandit_v2", v2_config(in_channels=2), "kwargs.in_channels must be 1"),
        ("bandit_v2", v2_config(onesided=False), "kwargs.onesided"),
        ("bandit_v2", v2_config(treat_channel_as_feature=False), "not implemented"),
        ("bandit_v2", v2_config(stems=["a", "a"]), "distinct"),
        ("bandit_v2", v2_config(center=False), "kwargs.center"),
        ("bandit_v2", v2_config(window_fn="kaiser_window", wkwargs={"beta": 8.0}), "wkwargs"),
    ],
)
def test_bad_config_is_one_line_config_error(family, config, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_from_msst(config, family)
    assert "\n" not in str(info.value)


def test_card_stems_must_match_outputs():
    card = bandit.from_msst(v1_config())
    with pytest.raises(ConfigError, match="stem"):
        bandit.build(card["model"], sample_rate=44100, stems=["a", "b", "c"], chunk_size=44100)


def test_card_stem_names():
    names = ["Speech", "music", "SFX", "Lead Vocals", "back-vox"]
    assert card_stems(names) == ["dialog", "music", "effects", "lead_vocals", "back_vox"]
    with pytest.raises(ConfigError, match="distinct"):
        card_stems(["sfx", "effects"])


def test_vocal_layout_is_mssts():
    """MSST's VocalBandsplitSpecification (version 7) at n_fft 2048, 44.1 kHz, as MSST lists it."""
    edges = [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 46, 58, 70, 82, 94, 106, 118, 130, 142, 154]
    edges += [166, 178, 186, 209, 232, 255, 278, 301, 324, 347, 370, 372, 418, 464, 510, 556]
    edges += [602, 648, 694, 740, 743, 836, 929, 1025]
    assert vocal_layout(2048, 44100).bands == tuple(zip(edges[:-1], edges[1:]))
    model = small("bandit", band_specs="dnr:speech")  # non-overlapping: no band weights
    assert not any("freq_weights" in k for k in model.state_dict())
    assert len(model.bsrnn.band_split.norm_fc_modules) == len(edges) - 1


# --- forward contract ----------------------------------------------------------------------------
def small(family: str, **extra):
    config = v1_config(**extra) if family == "bandit" else v2_config(**extra)
    config.setdefault("model" if family == "bandit" else "kwargs", {}).update(
        n_sqm_modules=1, emb_dim=8, rnn_dim=8, mlp_dim=8
    )
    _, _, model = build_from_msst(config, family)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("family", ["bandit", "bandit_v2"])
@pytest.mark.parametrize("channels, length", [(1, 3001), (3, 2500)])
def test_forward_keeps_length_stems_and_separates_channels_independently(family, channels, length):
    model = small(family, stems=["vocals"])
    x = torch.randn(2, channels, length)
    with torch.inference_mode():
        y = model(x)
        assert y.shape == (2, 1, channels, length)
        one = model(x[:, 1:2] if channels > 1 else x)
    torch.testing.assert_close(y[:, :, 1:2] if channels > 1 else y, one, atol=1e-5, rtol=0)


def test_v1_freq_weights_are_stored_but_applied_only_when_asked():
    on, off = small("bandit"), small("bandit", use_freq_weights=False)
    off.load_state_dict(on.state_dict(), strict=True)
    assert any("freq_weights/" in k for k in off.state_dict())
    x = torch.randn(1, 2, 4096)
    with torch.inference_mode():
        assert (on(x) - off(x)).abs().max() > 1e-4


def test_v2_aliases_and_no_weights_without_use_freq_weights():
    model = small("bandit_v2", use_freq_weights=False)
    keys = set(model.state_dict())
    assert not any("freq_weights" in k for k in keys)
    assert "mask_estim.speech.norm_mlp.0.combined.1.0.weight" in keys
    assert "mask_estim.speech.norm_mlp.0.hidden.0.weight" in keys
    assert {"tf_model.seqband.0.fc.weight", "tf_model.seqband.2.fc.weight"} <= keys


def test_training_path_equals_inference_and_has_gradients():
    model = small("bandit", freeze_encoder=True)
    x = torch.randn(1, 2, 3000)
    with torch.inference_mode():
        y_fast = model(x)
    model.train()  # no dropout in BandIt: same maths, torch's own RNN
    y = model(x)
    torch.testing.assert_close(y, y_fast, atol=1e-5, rtol=0)
    y.square().mean().backward()
    est = model.bsrnn.mask_estim["speech"].norm_mlp[0]
    assert est.hidden[0].weight.grad is not None
    assert all(p.grad is None for p in model.bsrnn.tf_model.parameters())  # frozen


# --- batched and fused paths against their definitions -----------------------------------------
def layout_from(widths: list[int], steps: list[int], seed: int) -> BandLayout:
    """Bands of the given widths, each starting `step` bins after the previous start (overlap
    when the step is shorter than the width), with random positive weights."""
    gen = torch.Generator().manual_seed(seed)
    bands, start = [], 0
    for w, step in zip(widths, steps):
        bands.append((start, start + w))
        start += min(step, w)
    n_freq = max(e for _, e in bands)
    weights = tuple(
        (torch.rand(w, generator=gen, dtype=torch.float64) + 0.1).numpy() for w in widths
    )
    return BandLayout(tuple(bands), n_freq, weights)


@settings(max_examples=12, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=8),
    steps=st.lists(st.integers(1, 9), min_size=8, max_size=8),
    v2=st.booleans(),
    complex_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batched_band_modules_equal_per_band_loop(widths, steps, v2, complex_mask, seed):
    layout = layout_from(widths, steps, seed)
    cfg = CoreConfig(
        stems=("a", "b"),
        emb_dim=6,
        rnn_dim=4,
        n_sqm_modules=0,
        bidirectional=True,
        rnn_type="GRU",
        mlp_dim=5,
        hidden_activation="Tanh",
        hidden_activation_kwargs=None,
        complex_mask=complex_mask,
    )
    core = (BanditV2Core if v2 else BanditCore)(cfg, layout, store_weights=True, apply_weights=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(0.3 * torch.randn_like(p))
    t, r, f, k = 3, 2, layout.n_freq, len(layout.bands)
    feats = torch.randn(t, r, 2 * f)
    q = torch.randn(k, r, t, cfg.emb_dim)
    with torch.no_grad():
        z = core.band_split(feats)
        masks = core._masks(q)
        ref_z = torch.stack(
            [
                m(feats[..., core._feature_index(s, e)])
                for m, (s, e) in zip(core.band_split.norm_fc_modules, layout.bands)
            ],
            dim=2,
        )
        c = core.reim
        ref = torch.zeros(2, r * t, c * f)
        qk = q.reshape(k, r * t, -1)
        for n, est in enumerate(core.mask_estim.values()):
            for b, (s, e) in enumerate(layout.bands):
                fw = est.get_buffer(f"freq_weights/{b}").float().repeat_interleave(c)
                ref[n, :, c * s : c * e] += est.norm_mlp[b](qk[b]) * fw
    torch.testing.assert_close(z, ref_z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rnn_type", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("block", [4096, 9])  # 9 rows: input projections in blocks of 2 steps
def test_fused_rnn_equals_torch_rnn(rnn_type, bidirectional, block, monkeypatch):
    monkeypatch.setattr(recurrent, "_BLOCK", block)
    torch.manual_seed(1)
    layer = ResidualRNN(6, 5, bidirectional, rnn_type)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(7, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer.fused(x, Workspace()), layer(x), atol=1e-6, rtol=1e-5)


def test_seqband_fused_equals_torch_path():
    torch.manual_seed(2)
    rnns = [ResidualRNN(6, 5, True, "GRU") for _ in range(4)]
    z = torch.randn(5, 2, 3, 6)  # (t, r, k, d)
    with torch.no_grad():
        fused = run_seqband(rnns, z)
    reference = run_seqband(rnns, z)  # gradients on: torch's RNN
    assert fused.shape == (3, 2, 5, 6)
    torch.testing.assert_close(fused, reference.detach(), atol=1e-5, rtol=1e-5)


def test_stft_window_normalisation_is_torchaudios():
    torch.manual_seed(3)
    x = torch.randn(2, 3000)
    window = torch.hann_window(512) + 0.01 * torch.randn(512)
    args = dict(n_fft=512, hop_length=128, window=window)
    spec = stft(x, normalized="window", pad_mode="constant", **args)
    plain = stft(x, pad_mode="constant", **args)
    torch.testing.assert_close(spec, plain / window.square().sum().sqrt())
    back = istft(spec, normalized="window", length=3000, **args)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="normalized"):
        stft(x, normalized="frame", **args)
