"""Checkpoint and config I/O: wrapper formats, safetensors, safe YAML, refusal of unsafe pickles,
readable mismatch errors, and conversion to safetensors plus a card."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from separator.cli import main
from separator.errors import CheckpointError, ConfigError
from separator.files import read_yaml
from separator.nn import BSRoformer, MelBandRoformer, infer_msst_family
from separator.zoo import load_model, read_card
from separator.zoo.formats import load_state_dict, save_state_dict
from separator.zoo.loader import convert_checkpoint

# A real-shaped MSST config (layout of the community BS-RoFormer YAMLs), shrunk so tests are fast.
MSST_BS_YAML = """\
audio:
  chunk_size: 131584
  dim_f: 1024
  dim_t: 801
  hop_length: 441
  n_fft: 2048
  num_channels: 2
  sample_rate: 44100
  min_mean_abs: 0.000
model:
  dim: 32
  depth: 2
  stereo: true
  num_stems: 1
  time_transformer_depth: 1
  freq_transformer_depth: 1
  linear_transformer_depth: 0
  freqs_per_bands: !!python/tuple
  - 4
  - 4
  - 4
  - 4
  - 8
  - 8
  - 16
  - 16
  - 32
  - 32
  - 64
  - 65
  dim_head: 16
  heads: 2
  attn_dropout: 0.1
  ff_dropout: 0.1
  flash_attn: true
  dim_freqs_in: 257
  stft_n_fft: 512
  stft_hop_length: 128
  stft_win_length: 512
  stft_normalized: false
  mask_estimator_depth: 2
  multi_stft_resolution_loss_weight: 1.0
  multi_stft_resolutions_window_sizes: !!python/tuple
  - 4096
  - 2048
  - 1024
  - 512
  - 256
  multi_stft_hop_size: 147
  multi_stft_normalized: False
  mlp_expansion_factor: 4
  use_torch_checkpoint: False
  skip_connection: False
training:
  batch_size: 2
  gradient_accumulation_steps: 1
  grad_clip: 0
  instruments:
  - vocals
  - other
  lr: 5.0e-05
  patience: 2
  reduce_factor: 0.95
  target_instrument: vocals
  num_epochs: 1000
  num_steps: 1000
  q: 0.95
  coarse_loss_clip: true
  ema_momentum: 0.999
  optimizer: adam
  other_fix: false
  use_amp: true
inference:
  batch_size: 1
  dim_t: 1101
  num_overlap: 2
"""

MSST_MEL_YAML = """\
audio:
  chunk_size: 88200
  sample_rate: 44100
model:
  dim: 32
  depth: 1
  stereo: true
  num_stems: 2
  time_transformer_depth: 1
  freq_transformer_depth: 1
  num_bands: 16
  dim_head: 16
  heads: 2
  attn_dropout: 0.0
  ff_dropout: 0.0
  flash_attn: true
  dim_freqs_in: 257
  sample_rate: 44100
  stft_n_fft: 512
  stft_hop_length: 128
  stft_win_length: 512
  stft_normalized: false
  mask_estimator_depth: 1
  mlp_expansion_factor: 4
  match_input_audio_length: true
training:
  instruments: [vocals, instrumental]
  target_instrument: null
"""


@pytest.fixture
def bs_config(tmp_path) -> Path:
    p = tmp_path / "config_bs.yaml"
    p.write_text(MSST_BS_YAML)
    return p


def test_msst_yaml_with_tuples_parses(bs_config):
    data = read_yaml(bs_config)
    assert data["model"]["freqs_per_bands"] == (4, 4, 4, 4, 8, 8, 16, 16, 32, 32, 64, 65)
    assert data["model"]["multi_stft_resolutions_window_sizes"] == (4096, 2048, 1024, 512, 256)
    card = read_card(bs_config)
    assert card.architecture == "bs_roformer"
    assert card.stems == ("vocals",)  # target_instrument set: one stem
    assert (card.sample_rate, card.chunk_size) == (44100, 131584)


def test_yaml_refuses_arbitrary_python_objects(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not a valid config YAML"):
        read_yaml(p)
    assert not (tmp_path / "pwned").exists()


def test_model_type_inferred_from_keys():
    shape = {"dim": 8, "depth": 1}
    assert infer_msst_family({**shape, "num_bands": 60}).name == "mel_band_roformer"
    assert infer_msst_family({**shape, "freqs_per_bands": (2, 2)}).name == "bs_roformer"
    assert infer_msst_family(shape).name == "bs_roformer"  # BS bands have a default layout
    with pytest.raises(ConfigError, match="cannot tell the model type.*one of"):
        infer_msst_family({**shape, "num_bands": 60, "freqs_per_bands": (1,)})


def test_load_model_sets_engine_attributes(bs_config, tmp_path):
    model = load_model(bs_config, _save_random(bs_config, tmp_path / "w.ckpt"))
    assert isinstance(model, BSRoformer)
    assert model.sample_rate == 44100
    assert model.stems == ("vocals",)
    assert model.audio_channels == 2
    assert model.chunk_size == 131584
    assert not model.training


def test_mel_config_without_target_keeps_all_stems(tmp_path):
    p = tmp_path / "mel.yaml"
    p.write_text(MSST_MEL_YAML)
    card = read_card(p)
    assert card.architecture == "mel_band_roformer" and card.stems == ("vocals", "instrumental")


def _save_random(config: Path, path: Path, wrap=lambda sd: sd) -> Path:
    from separator.zoo import build_model

    model = build_model(read_card(config))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save(wrap(model.state_dict()), path)
    return path


WRAPPERS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "state": lambda sd: {"state": sd, "best_sdr": 9.1},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    "ddp": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "ddp_wrapped": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".pt"])
def test_strict_load_of_every_wrapper(bs_config, tmp_path, wrapper, suffix):
    from separator.zoo import build_model

    ref = build_model(read_card(bs_config))
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / f"model{suffix}"
    torch.save(WRAPPERS[wrapper](ref.state_dict()), path)
    sd = load_state_dict(path)
    assert set(sd) == set(ref.state_dict())
    model = load_model(bs_config, path)
    x = torch.randn(1, 2, 3000)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref.eval()(x))


def test_safetensors_round_trip_keeps_output(bs_config, tmp_path):
    ckpt = _save_random(bs_config, tmp_path / "w.ckpt")
    model = load_model(bs_config, ckpt)
    save_state_dict(model, tmp_path / "w.safetensors")
    again = load_model(bs_config, tmp_path / "w.safetensors")
    x = torch.randn(1, 2, 5000)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_evil_checkpoint(path: Path, marker: Path) -> _Evil:
    """A checkpoint whose unpickling would run `touch marker`."""
    evil = _Evil()
    evil.marker = marker
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": evil}}, f)
    return evil


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    evil = write_evil_checkpoint(path, marker)
    # torch.save format too (zip container with a malicious data.pkl).
    path2 = tmp_path / "evil2.pth"
    torch.save({"state_dict": {"x": evil}}, path2)
    for p in (path, path2):
        with pytest.raises(CheckpointError, match=f"{p.name}: refused: .*arbitrary pickled"):
            load_state_dict(p)
    assert not marker.exists()


def test_corrupt_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match="nope.ckpt: no such checkpoint"):
        load_state_dict(tmp_path / "nope.ckpt")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_state_dict(bad_st)


def test_shape_mismatch_names_keys_and_fields(bs_config, tmp_path):
    ckpt = _save_random(bs_config, tmp_path / "w.ckpt")
    data = yaml.load(MSST_BS_YAML, Loader=yaml.UnsafeLoader)  # test-only: our own text
    data["model"]["dim"] = 48
    data["model"]["depth"] = 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(_lists(data)))
    with pytest.raises(CheckpointError) as e:
        load_model(other, ckpt)
    msg = str(e.value)
    assert "w.ckpt: checkpoint does not fit the model with config" in msg
    assert "with other shapes (layers.0.0.layers.0.0.norm.gamma (32,) vs model (48,)" in msg
    assert "missing (layers.2." in msg
    assert "Check model.depth; model." in msg
    assert "depth 2" in msg
    assert "\n" not in msg


def test_wrong_stem_count_is_explained(bs_config, tmp_path):
    ckpt = _save_random(bs_config, tmp_path / "w.ckpt")
    data = read_yaml(bs_config)
    data["model"]["num_stems"] = 2
    data["training"]["target_instrument"] = None
    other = tmp_path / "two.yaml"
    other.write_text(yaml.safe_dump(_lists(data)))
    with pytest.raises(CheckpointError, match=r"num_stems .*the checkpoint has 1 stem\(s\)"):
        load_model(other, ckpt)


def test_inconsistent_stems_in_config(tmp_path):
    data = read_yaml_text(MSST_BS_YAML)
    data["training"]["target_instrument"] = None
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_lists(data)))
    with pytest.raises(ConfigError, match="instruments lists 2 stems but model.num_stems=1"):
        read_card(p)
    data["training"]["instruments"] = ["../../etc"]
    data["model"]["num_stems"] = 1
    p.write_text(yaml.safe_dump(_lists(data)))
    assert read_card(p).stems == ("etc",)  # mapped to one safe path component, never a path


def test_convert_writes_safetensors_and_card(bs_config, tmp_path):
    ckpt = _save_random(bs_config, tmp_path / "w.ckpt", WRAPPERS["ddp_wrapped"])
    out = tmp_path / "out" / "my_model.safetensors"
    weights, card_path = convert_checkpoint(ckpt, bs_config, out)
    assert weights == out and card_path == out.with_suffix(".yaml")
    card = read_card(card_path)
    assert card.name == "my_model" and card.stems == ("vocals",)
    assert card.weights["size"] == out.stat().st_size and len(card.weights["sha256"]) == 64
    a, b = load_model(bs_config, ckpt), load_model(card_path)
    x = torch.randn(1, 2, 4000)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(ckpt, bs_config, out)
    assert not list(out.parent.glob("*.part"))


def test_convert_cli(bs_config, tmp_path, capsys):
    ckpt = _save_random(bs_config, tmp_path / "w.ckpt")
    out = tmp_path / "m.safetensors"
    assert main(["convert", str(ckpt), "--config", str(bs_config), "-o", str(out)]) == 0
    assert out.exists() and out.with_suffix(".yaml").exists()
    assert main(["convert", str(ckpt), "--config", str(bs_config), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "Traceback" not in err


def test_mel_checkpoint_round_trip(tmp_path):
    p = tmp_path / "mel.yaml"
    p.write_text(MSST_MEL_YAML)
    model = load_model(p, _save_random(p, tmp_path / "m.pth"))
    assert isinstance(model, MelBandRoformer) and model.stems == ("vocals", "instrumental")


def read_yaml_text(text: str) -> dict:
    from separator.files import _ConfigLoader

    return yaml.load(text, Loader=_ConfigLoader)


def _lists(obj):
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj
