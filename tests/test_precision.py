"""precision="auto": bf16 only where the hardware runs it natively and it pays; fp32 unchanged;
bf16 autocast without torch's dtype-mismatch warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_cli_separate import TINY_BS
from tiny_models import ConvModel

from separator.errors import SeparatorError
from separator.inference import Separator
from separator.inference import precision as P
from separator.inference.engine import separate_tensor
from separator.zoo import ModelCard, build_model

CPU = torch.device("cpu")


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """`auto` as a user gets it (no override), with the cache in a temporary folder."""
    monkeypatch.delenv(P.AUTO_ENV, raising=False)
    monkeypatch.setenv("SEPARATOR_CACHE", str(tmp_path))
    return tmp_path


def _capability(monkeypatch, **flags) -> None:
    caps = {"avx512_bf16": False, "amx_bf16": False, "avx2": True, **flags}
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: caps, raising=False)


def _timing(monkeypatch, fp32_s: float, bf16_s: float, snr_db: float = 40.0) -> list:
    calls = []

    def fake(model, device):
        calls.append(device)
        return {"fp32_s": fp32_s, "bf16_s": bf16_s, "snr_db": snr_db}

    monkeypatch.setattr(P, "measure", fake)
    return calls


def test_cpu_capability_from_torch_then_cpuinfo(monkeypatch):
    _capability(monkeypatch, avx512_bf16=True)
    assert P.cpu_bf16_native()
    _capability(monkeypatch, amx_bf16=True)
    assert P.cpu_bf16_native()
    _capability(monkeypatch)
    assert not P.cpu_bf16_native()
    # an older torch without the dict query: its named queries, else /proc/cpuinfo flags
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    monkeypatch.setattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert P.cpu_bf16_native()
    monkeypatch.delattr(torch._C._cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch._C._cpu, "_is_amx_tile_supported")
    monkeypatch.setattr(P, "_cpuinfo", lambda field: "fpu avx2 avx512f avx512_bf16")
    assert P.cpu_bf16_native()
    monkeypatch.setattr(P, "_cpuinfo", lambda field: "fpu avx2 avx512f avx512_vnni")
    assert not P.cpu_bf16_native()


def test_cuda_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert P.bf16_native(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not P.bf16_native(torch.device("cuda"))
    assert not P.bf16_native(torch.device("mps"))


def test_auto_is_fp32_without_the_capability_and_never_times(auto, monkeypatch):
    _capability(monkeypatch)
    calls = _timing(monkeypatch, fp32_s=9.0, bf16_s=1.0)
    assert Separator(ConvModel(), device="cpu").precision == "fp32"
    assert calls == []


def test_auto_picks_bf16_with_the_capability_when_faster_and_caches(auto, monkeypatch):
    _capability(monkeypatch, avx512_bf16=True)
    calls = _timing(monkeypatch, fp32_s=2.0, bf16_s=1.0)
    sep = Separator(ConvModel(), device="cpu")
    assert sep.precision == "bf16" and sep.autocast_dtype == torch.bfloat16
    assert Separator(ConvModel(), device="cpu").precision == "bf16"
    assert len(calls) == 1  # timed once, then read from precision.json
    assert (auto / "precision.json").is_file()


@pytest.mark.parametrize(
    "fp32_s, bf16_s, snr_db",
    [(1.05, 1.0, 40.0), (1.0, 1.2, 40.0), (3.0, 1.0, 30.0)],
    ids=["not-measurably-faster", "slower", "output-too-far-from-fp32"],
)
def test_auto_keeps_fp32_when_bf16_does_not_pay(auto, monkeypatch, fp32_s, bf16_s, snr_db):
    _capability(monkeypatch, amx_bf16=True)
    _timing(monkeypatch, fp32_s, bf16_s, snr_db)
    assert Separator(ConvModel(), device="cpu").precision == "fp32"


def test_auto_override_and_bad_names(auto, monkeypatch):
    monkeypatch.setenv(P.AUTO_ENV, "bf16")
    assert Separator(ConvModel(), device="cpu").precision == "bf16"
    monkeypatch.setenv(P.AUTO_ENV, "int4")
    with pytest.raises(SeparatorError, match="SEPARATOR_AUTO_PRECISION"):
        Separator(ConvModel(), device="cpu")
    with pytest.raises(SeparatorError, match="unknown `precision` 'fp64'"):
        Separator(ConvModel(), device="cpu", precision="fp64")


def test_bf16_on_an_emulating_cpu_warns(monkeypatch):
    _capability(monkeypatch)
    with pytest.warns(UserWarning, match="emulated"):
        Separator(ConvModel(), device="cpu", precision="bf16")


def test_measure_times_both_formats_and_compares_outputs():
    out = P.measure(ConvModel(chunk_size=500), CPU)
    assert out["fp32_s"] > 0 and out["bf16_s"] > 0
    assert 20 < out["snr_db"] < 100  # bf16 keeps ~8 bits of mantissa: close, not equal


def test_fp32_path_is_unchanged_bit_for_bit(auto, monkeypatch):
    """auto without the capability, and fp32, run exactly the plain float32 engine."""
    _capability(monkeypatch)
    model = ConvModel()
    x = torch.randn(2, 5000)
    plain = separate_tensor(model, x)
    for precision in ("auto", "fp32"):
        sep = Separator(model, device="cpu", precision=precision)
        out = sep.separate_tensor(x, 8000)
        assert sep.autocast_dtype is None
        assert all(torch.equal(out[s], plain[i]) for i, s in enumerate(sep.stems))


def test_summary_line_says_which_precision_ran(tmp_path, monkeypatch, capsys):
    from tiny_models import GainModel, noise, write_wav

    import separator.inference.api
    from separator.cli import separate_main

    def load(name, config=None, *, model_type=None, offline=None):
        return GainModel(sample_rate=44100, chunk_size=22050)

    monkeypatch.setattr(separator.inference.api, "load_model", load)
    wav = write_wav(tmp_path / "song.wav", noise(2, 30000), 44100)
    assert separate_main([str(wav), "--model", "fake.yaml", "-o", str(tmp_path / "out")]) == 0
    assert "RTF" in (line := capsys.readouterr().err) and ", fp32)" in line
    monkeypatch.setenv(P.AUTO_ENV, "bf16")
    args = [str(wav), "--model", "fake.yaml", "-o", str(tmp_path / "o2"), "--stems", "vocals"]
    assert separate_main(args) == 0
    assert ", bf16)" in capsys.readouterr().err


def test_compile_on_the_cpu_says_it_does_not_help_and_runs_eagerly():
    model = ConvModel()
    with pytest.warns(UserWarning, match="does not speed these models up on the CPU"):
        sep = Separator(model, device="cpu", compile=True)
    assert sep._forward is sep.model  # not wrapped
    x = torch.randn(2, 3000)
    assert torch.equal(sep.separate_tensor(x, 8000)["vocals"], separate_tensor(model, x)[0])


def test_bf16_separation_raises_no_warning(monkeypatch):
    """RMSNorm normalises in its gain's dtype: no "Mismatch dtype" warning, fp32's result to
    bf16 accuracy."""
    _capability(monkeypatch, avx512_bf16=True)  # no "emulated" warning on CPUs without it
    card = ModelCard(name="tiny", architecture="bs_roformer", model=dict(TINY_BS),
                     stems=("vocals", "other"), sample_rate=44100, chunk_size=8192)  # fmt: skip
    model = build_model(card).eval()
    assert hasattr(model, "final_norm")  # the RMSNorm with a gain that met bf16 input
    mix = 0.1 * torch.randn(2, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mismatch dtype between input and weight" was a warning
        bf16 = Separator(model, device="cpu", precision="bf16").separate_tensor(mix, 44100)
    fp32 = Separator(model, device="cpu").separate_tensor(mix, 44100)
    for stem in ("vocals", "other"):
        err = (bf16[stem] - fp32[stem]).norm() / fp32[stem].norm()
        assert err < 0.05, (stem, float(err))
