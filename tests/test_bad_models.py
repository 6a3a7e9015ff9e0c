"""Models and cards that are wrong: non-finite output, bad cards and configs. Each is a one-line
error that names the model or card and the field; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_cli_separate import TINY_BS
from tiny_models import noise, write_wav

from separator.cli import separate_main
from separator.errors import SeparatorError
from separator.inference import Separator, separate_tensor
from separator.zoo import ModelCard, build_model, load_model
from separator.zoo.cards import weights_entry
from separator.zoo.formats import save_state_dict

RATE = 44100


def tiny_card(folder: Path, *, nan: bool = False, **fields) -> Path:
    """A tiny BS-RoFormer card with safetensors weights beside it (NaN weights if `nan`)."""
    card = ModelCard(
        name="tiny_nan" if nan else "tiny",
        architecture="bs_roformer",
        model=dict(TINY_BS),
        stems=("vocals", "other"),
        sample_rate=RATE,
        chunk_size=8192,
    )
    torch.manual_seed(0)
    model = build_model(card)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    weights = folder / f"{card.name}.safetensors"
    save_state_dict(model, weights)
    values = {**card.to_dict(), "weights": weights_entry(weights), **fields}
    path = folder / f"{card.name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


# --- non-finite model output --------------------------------------------------------------------
def test_nan_weights_fail_through_the_cli_and_leave_nothing(tmp_path, capsys):
    card = tiny_card(tmp_path, nan=True)
    song = write_wav(tmp_path / "song.wav", noise(2, RATE), RATE, subtype="PCM_16")
    out = tmp_path / "out"
    assert separate_main([str(song), "--model", str(card), "-o", str(out), "-q"]) == 2
    err = one_error_line(capsys)
    assert "song.wav: model tiny_nan returned NaN or infinite samples" in err
    assert "precision fp32" in err and "at 0.00 s of the input" in err
    assert "check the checkpoint" in err
    assert not out.exists()  # no stem, no temporary, no folder


def test_nan_output_under_bf16_suggests_fp32(tmp_path, capsys):
    card = tiny_card(tmp_path, nan=True)
    song = write_wav(tmp_path / "song.wav", noise(2, RATE), RATE)
    out = tmp_path / "out"
    code = separate_main([str(song), "--model", str(card), "-o", str(out), "--precision", "bf16"])
    assert code == 2
    err = one_error_line(capsys)
    assert "precision bf16" in err and "bf16 can overflow: try --precision fp32" in err
    assert not out.exists()


def test_nan_output_through_the_api_names_the_chunk_time(tmp_path):
    model = load_model(tiny_card(tmp_path, nan=True))
    with pytest.raises(SeparatorError, match=r"model tiny_nan returned NaN .* precision fp32"):
        Separator(model, device="cpu").separate_tensor(torch.zeros(2, RATE), RATE)

    class LateOverflow(torch.nn.Module):
        """Identity until 1.5 s at the model's rate, then inf: the first bad chunk is later."""

        sample_rate, stems, audio_channels, chunk_size = 1000, ("a",), 1, 500

        def forward(self, x):
            return torch.where(x > 1.0, float("inf"), x)[:, None]

    mix = torch.zeros(1, 3000)
    mix[0, 1500:] = 2.0  # chunks hop by 250 samples: the one starting at 1.25 s sees it first
    with pytest.raises(SeparatorError, match=r"model LateOverflow .* at 1.25 s of the input"):
        separate_tensor(LateOverflow(), mix)


# --- wrong cards and configs --------------------------------------------------------------------
def _edit(card: Path, edit) -> Path:
    values = yaml.safe_load(card.read_text())
    edit(values)
    card.write_text(yaml.safe_dump(values))
    return card


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["model"].update(dim="sixty-four"), "bad `model.dim` 'sixty-four'"),
        (lambda c: c["model"].update(num_stems=4), "2 stem names ['vocals', 'other'] given for"),
        (
            lambda c: c.update(chunk_size=100),
            "`chunk_size` 100 (MSST: audio.chunk_size) is shorter than this model's minimum of "
            "129 samples",  # n_fft 256: reflect padding needs more than 128 samples
        ),
        (
            lambda c: c.update(weights={"file": "/etc/passwd"}),
            "`weights.file`: /etc/passwd: not a readable checkpoint",
        ),
        (lambda c: c.update(weights={"file": "."}), "`weights.file` "),
    ],
    ids=["dim-text", "stems-for-4", "chunk-100", "weights-passwd", "weights-folder"],
)
def test_wrong_cards_are_one_line_naming_card_and_field(tmp_path, capsys, edit, message):
    card = _edit(tiny_card(tmp_path), edit)
    song = write_wav(tmp_path / "song.wav", noise(2, RATE // 2), RATE)
    out = tmp_path / "out"
    assert separate_main([str(song), "--model", str(card), "-o", str(out), "-q"]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {card}: ") and message in err
    assert not out.exists()


def test_binary_yaml_is_one_line(tmp_path, capsys):
    card = tmp_path / "binary.yaml"
    card.write_bytes(bytes(range(256)))
    song = write_wav(tmp_path / "song.wav", noise(2, RATE // 2), RATE)
    assert separate_main([str(song), "--model", str(card), "-o", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == f"error: {card}: not a YAML file (not UTF-8 text)"


def test_short_chunk_in_an_msst_config_is_refused_at_load(tmp_path):
    from test_cli_separate import tiny_bs_files

    config, ckpt = tiny_bs_files(tmp_path)
    _edit(config, lambda c: c["audio"].update(chunk_size=100))
    with pytest.raises(SeparatorError, match=r"tiny0.yaml: `chunk_size` 100 .* minimum of 129"):
        load_model(config, ckpt)
    _edit(config, lambda c: c["audio"].update(chunk_size=129))
    assert load_model(config, ckpt).chunk_size == 129  # the minimum itself runs
