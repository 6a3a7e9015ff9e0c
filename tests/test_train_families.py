"""Training any registered family: a few steps of each trainable family on stempeg's real stems
lower the loss on a fixed batch; the `loss:` section (MSST's masked_loss); the MUSDB18HQ recipes
of SCNet and MDX23C have the sizes of MSST's MUSDB configs; restoration (Apollo) is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from separator.errors import ConfigError
from separator.nn import get_family
from separator.training.losses import loss_spec, masked_mse, separation_loss
from separator.training.recipe import load_recipe, recipe_from_dict
from separator.training.trainer import Trainer
from tests import test_nn_apollo, test_nn_mdx23c, test_nn_scnet
from tests.msst_families import msst_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread

ROOT = Path(__file__).resolve().parents[1]
STEMS = ["vocals", "other"]


def _fields(family: str, config: dict) -> dict:
    return get_family(family).from_msst(config)["model"]


def _bandit(version: int) -> dict:
    small = dict(stems=STEMS, n_sqm_modules=1, emb_dim=8, rnn_dim=8, mlp_dim=8, n_bands=8)
    if version == 1:
        return _fields("bandit", {"model": dict(in_channel=1, band_specs="musical", **small)})
    kwargs = dict(in_channels=1, n_fft=512, win_length=512, hop_length=128, **small)
    return _fields("bandit_v2", {"kwargs": kwargs, "audio": {"sample_rate": 44100}})


def _roformer(family: str, **options) -> dict:
    stack = "conformer" if "conformer" in family else "transformer"
    model = dict(dim=16, depth=2, heads=2, dim_head=8, stereo=True, num_stems=2,
                 stft_n_fft=256, stft_hop_length=64, stft_win_length=256,
                 **{f"time_{stack}_depth": 1, f"freq_{stack}_depth": 1}, **options)  # fmt: skip
    if "mel" in family:
        model["num_bands"] = 16
    else:
        model["freqs_per_bands"] = [2] * 8 + [4] * 8 + [8] * 4 + [16, 33]
    return _fields(family, {"model": model, "training": {"instruments": STEMS}})


# family -> (the recipe's model.args (a card's model section) for two stems, vocals and other;
# learning rate). Tiny sizes keep each test to seconds. A family merged later adds a line.
CASES = {
    "mdx23c": (_fields("mdx23c", test_nn_mdx23c.tiny()), 1e-2),
    "scnet": (_fields("scnet", test_nn_scnet.tiny()), 1e-2),
    "scnet_masked": (_fields("scnet_masked", test_nn_scnet.tiny()), 1e-2),
    "scnet_tran": (_fields("scnet_tran", test_nn_scnet.tiny()), 1e-2),
    "bandit": (_bandit(1), 3e-2),
    "bandit_v2": (_bandit(2), 3e-2),
    "bs_roformer_experimental": (
        _roformer("bs_roformer_experimental", use_value_residual_learning=True),
        3e-2,
    ),
    "mel_band_roformer_experimental": (_roformer("mel_band_roformer_experimental"), 3e-2),
    "bs_conformer": (_roformer("bs_conformer", conv_kernel_size=7), 1e-2),
    "mel_band_conformer": (_roformer("mel_band_conformer", conv_kernel_size=7), 1e-2),
}
CHUNK = 4096


def recipe(root: Path, out: Path, family: str, args: dict, chunk: int, **sections):
    data = {
        "name": f"tiny_{family}",
        "output_dir": str(out),
        "model": {"architecture": family, "args": args},
        "audio": {"sample_rate": 44100, "chunk_size": chunk},
        "data": {"root": str(root), "stems": STEMS},
        "training": {"steps": 1000, "batch_size": 2, "lr": 1e-2, "warmup_steps": 0,
                     "schedule": "constant", "ema_decay": 0.0, "log_every": 1},
    }  # fmt: skip
    for key, values in sections.items():
        data[key] = data.get(key, {}) | values
    return recipe_from_dict(data)


def fixed_batch_loss(trainer: Trainer, batch) -> float:
    mix, ref = batch
    trainer.model.eval()
    with torch.no_grad():
        loss = separation_loss(trainer.model(mix), ref, trainer.loss)
    trainer.model.train()
    return float(loss)


def lowers_the_loss(trainer: Trainer, steps: int) -> tuple[float, float]:
    """The loss on the first batch before and after `steps` training steps (no validation)."""
    batch = next(trainer._loader(0, 1))
    before = fixed_batch_loss(trainer, batch)
    state = trainer.run(stop_at=steps)
    assert state["step"] == steps
    return before, fixed_batch_loss(trainer, batch)


@pytest.mark.parametrize("family", CASES)
def test_a_few_steps_lower_the_loss(family, musdb_example, tmp_path):
    """Plain L1 (the RoFormers' multi-resolution STFT term off: faster, and the RoFormer
    objective has its own tests); the seeded runs end 2-15 % lower after 10 steps."""
    args, lr = CASES[family]
    rec = recipe(musdb_example, tmp_path / "run", family, args, CHUNK,
                 training={"lr": lr}, loss={"multi_stft": 0.0})  # fmt: skip
    trainer = Trainer(rec)
    assert type(trainer.model) is type(get_family(family).build(
        args, sample_rate=44100, stems=STEMS, chunk_size=CHUNK))  # fmt: skip
    before, after = lowers_the_loss(trainer, 10)
    assert after < 0.98 * before, (before, after)
    assert (tmp_path / "run" / "last.ckpt").is_file()


def test_masked_loss_recipe_trains(musdb_example, tmp_path):
    args, _ = CASES["scnet"]
    loss = {"l1": 0.0, "masked_mse": 1.0}
    trainer = Trainer(recipe(musdb_example, tmp_path / "run", "scnet", args, CHUNK, loss=loss))
    assert trainer.loss.masked_mse == 1.0 and trainer.loss.l1 == 0.0
    before, after = lowers_the_loss(trainer, 8)
    assert after < 0.95 * before, (before, after)


def test_restoration_is_refused(musdb_example, tmp_path):
    fields = get_family("apollo").from_msst(test_nn_apollo.tiny())
    one_stem = {"stems": ["vocals"], "target": "vocals"}
    rec = recipe(musdb_example, tmp_path, "apollo", fields["model"], 4000,
                 audio={"sample_rate": 16000}, data=one_stem)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        Trainer(rec)
    message = str(err.value)
    assert "\n" not in message and "apollo" in message and "restoration" in message


def test_grad_checkpoint_needs_the_family_to_have_it(musdb_example, tmp_path):
    args, _ = CASES["mdx23c"]
    rec = recipe(musdb_example, tmp_path, "mdx23c", args, CHUNK, training={"grad_checkpoint": True})
    with pytest.raises(ConfigError, match="training.grad_checkpoint: mdx23c models have no"):
        Trainer(rec)


def test_masked_mse_matches_msst_definition():
    """MSST's masked_loss (utils/losses.py at ccc011a): MSE per element, mean over (channels,
    time) when coarse, then per stem the values at or above the q-quantile over the batch drop."""
    torch.manual_seed(1)
    est, ref = torch.randn(4, 3, 2, 100), torch.randn(4, 3, 2, 100)
    err = ((est - ref) ** 2).mean(dim=(2, 3)).T  # (stems, batch)
    q = torch.quantile(err, 0.9, dim=1, keepdim=True)
    expected = torch.where(err < q, err, 0).mean()
    torch.testing.assert_close(masked_mse(est, ref, 0.9, True), expected)
    fine = ((est - ref) ** 2).transpose(0, 1).reshape(3, -1)  # not coarse: every element
    q = torch.quantile(fine, 0.9, dim=1, keepdim=True)
    expected_fine = torch.where(fine < q, fine, 0).mean()
    torch.testing.assert_close(masked_mse(est, ref, 0.9, False), expected_fine)
    spec = loss_spec({"l1": 0.0, "masked_mse": 2.0, "q": 0.9})
    torch.testing.assert_close(separation_loss(est, ref, spec), 2 * expected)


def test_loss_settings_come_from_the_recipe_then_the_model_config():
    from separator.nn.config import BSRoformerConfig

    cfg = BSRoformerConfig(dim=8, depth=1, multi_stft_resolutions_window_sizes=(4096, 512))
    spec = loss_spec(None, cfg)  # no loss: section: the RoFormer's own objective
    assert (spec.l1, spec.multi_stft, spec.stft_windows) == (1.0, 1.0, (4096, 512))
    spec = loss_spec({"multi_stft": 0.5, "stft_windows": [256]}, cfg)
    assert (spec.multi_stft, spec.stft_windows, spec.stft_hop) == (0.5, (256,), 147)
    assert loss_spec(None, None).multi_stft == 0.0  # families without it: plain L1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"l1": 0.0}, "loss weights must be >= 0 with one above 0"),
        ({"mse": -1.0}, "loss weights must be >= 0"),
        ({"masked_mse": 1.0, "q": 0.0}, "loss.q must be in (0, 1]"),
        ({"multi_stft": 1.0, "stft_windows": [1]}, "loss.stft_windows must be sizes >= 2"),
        ({"huber": 1.0}, "bad loss section"),
    ],
)
def test_bad_loss_sections(section, message):
    with pytest.raises(ConfigError) as err:
        loss_spec(section)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_masked_loss_needs_two_examples(musdb_example, tmp_path):
    args, _ = CASES["scnet"]
    rec = recipe(musdb_example, tmp_path, "scnet", args, CHUNK,
                 training={"batch_size": 1}, loss={"l1": 0.0, "masked_mse": 1.0})  # fmt: skip
    with pytest.raises(ConfigError, match="needs training.batch_size >= 2"):
        Trainer(rec)


@pytest.mark.parametrize(
    ("name", "config"),
    [("musdb18hq_scnet", "config_musdb18_scnet"), ("musdb18hq_mdx23c", "config_musdb18_mdx23c")],
)
def test_musdb_recipes_have_msst_sizes(name, config):
    """The recipe's model, stems, rate and chunk are those of MSST's MUSDB config; it builds."""
    rec = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    msst = msst_config(config)
    fields = get_family(rec.model.architecture).from_msst(msst)
    assert dict(rec.model.args) == fields["model"]
    assert list(rec.model_stems) == fields["stems"]
    assert (rec.audio.sample_rate, rec.audio.chunk_size) == (44100, msst["audio"]["chunk_size"])
    t = msst["training"]
    assert (rec.training.batch_size, rec.training.lr) == (t["batch_size"], t["lr"])
    assert (rec.loss.masked_mse, rec.loss.l1, rec.loss.q) == (1.0, 0.0, t["q"])
    with torch.device("meta"):
        module = get_family(rec.model.architecture).build(
            dict(rec.model.args), sample_rate=44100, stems=rec.model_stems,
            chunk_size=rec.audio.chunk_size)  # fmt: skip
    assert module.stems == tuple(rec.model_stems)


def test_grad_checkpoint_reaches_the_roformers(musdb_example, tmp_path):
    overrides = [f"data.root={musdb_example}", f"output_dir={tmp_path}"]
    overrides.append("training.grad_checkpoint=true")
    trainer = Trainer(load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", overrides))
    assert trainer.model.config.use_torch_checkpoint
    assert "use_torch_checkpoint" not in trainer.card.model  # the exported card stays as written


def test_every_trainable_family_has_a_smoke_test():
    """Every separating MSST family (not Apollo: restoration; not the Demucs families, whose
    issue is separate; the 2024 RoFormers: test_train.py)."""
    from separator.nn import FAMILIES

    msst = {n for n, f in FAMILIES.items() if f.checkpoint_format == "state_dict"}
    others = {"apollo", "htdemucs", "bs_roformer", "mel_band_roformer"}
    assert msst - others == set(CASES)
