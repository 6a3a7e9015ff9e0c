"""Safe reading of demucs `.th` packages, bag YAMLs, DiffQ states and MSST HTDemucs checkpoints.

Fixtures in `tests/fixtures/demucs/`: the golden packages (`trim_golden.py`) and three DiffQ
packages with the float state dicts that demucs + diffq restore from them (`make_diffq.py`,
made once in a throwaway environment with the real diffq 0.2.4; diffq is not needed here).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from separator.errors import CheckpointError, ConfigError
from separator.nn.demucs import DemucsBag, HDemucs, HTDemucs
from separator.zoo.demucs import (
    load_bag,
    load_msst,
    load_package,
    local_repo,
    read_bag,
    read_package,
    read_state_dict,
    safe_load,
)
from tests.test_demucs_nn import MSST_YAML as NN_MSST_YAML

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread

FIXTURES = Path(__file__).parent / "fixtures" / "demucs"
PACKAGES = {
    "htdemucs_4s": "htdemucs",
    "htdemucs_6s": "htdemucs",
    "hdemucs_v3": "hdemucs",
    "demucs_v2": "demucs",
}


def reference(case: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / f"{case}.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


# --- packages ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "klass"), PACKAGES.items())
def test_read_package(case, klass):
    pkg = read_package(FIXTURES / f"{case}.th")
    _, meta = reference(case)
    assert pkg.klass == klass and pkg.args == ()
    assert set(pkg.extras) == {"training_args", "metrics"}
    assert pkg.extras["training_args"]["model"] == klass
    assert all(v.dtype == torch.float32 for v in pkg.state.values())
    stored = json.loads(meta["kwargs"])
    assert pkg.kwargs["sources"] == stored["sources"]
    if case == "htdemucs_4s":  # tools/export.py stores the HTDemucs segment as a Fraction
        assert pkg.kwargs["segment"] == Fraction(1, 5) and isinstance(
            pkg.kwargs["segment"], Fraction
        )
    assert pkg.model == {"klass": klass, "kwargs": pkg.kwargs}


def test_package_loading_does_not_import_demucs(tmp_path):
    """The stand-ins replace the classes: a process without demucs on its path loads packages."""
    script = (
        "import sys; sys.modules['demucs'] = None\n"  # any `import demucs` would now fail
        "from separator.zoo.demucs import load_package\n"
        f"m = load_package({str(FIXTURES / 'htdemucs_4s.th')!r})\n"
        "print(type(m).__name__, m.chunk_size)\n"
    )
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["HTDemucs", "8820"]


@pytest.mark.parametrize("case", PACKAGES)
def test_load_package_reproduces_the_golden_output(case):
    tensors, _ = reference(case)
    model = load_package(FIXTURES / f"{case}.th")
    assert not model.training
    with torch.no_grad():
        out = model(tensors["__input__"])
    torch.testing.assert_close(out, tensors["__output__"], atol=1e-5, rtol=0)


def test_not_a_package(tmp_path):
    plain = tmp_path / "plain.th"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.th: not a demucs package"):
        read_package(plain)
    broken = tmp_path / "broken.th"
    broken.write_bytes((FIXTURES / "demucs_v2.th").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"broken\.th: not a readable checkpoint"):
        read_package(broken)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_package(tmp_path / "missing.th")


def _resave(case: str) -> dict:
    """A package read safely, with the real demucs class put back so that it can be saved."""
    Demucs = pytest.importorskip("demucs.demucs").Demucs
    RefHDemucs = pytest.importorskip("demucs.hdemucs").HDemucs
    pkg = safe_load(FIXTURES / f"{case}.th")
    pkg["klass"] = RefHDemucs if "hdemucs" in case else Demucs
    return pkg


def test_weights_that_do_not_fit_are_refused(tmp_path):
    pkg = _resave("demucs_v2")
    pkg["state"] = {k: v for k, v in pkg["state"].items() if not k.startswith("decoder.0.")}
    bad = tmp_path / "cut.th"
    torch.save(pkg, bad)
    with pytest.raises(CheckpointError, match=r"cut\.th: the weights do not fit the model"):
        load_package(bad)


# --- malicious packages -------------------------------------------------------------------------
class _Payload:
    """Pickles as a call to os.system (what a malicious checkpoint would carry)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _package(**overrides) -> dict:
    pkg = _resave("demucs_v2")
    pkg.update(overrides)
    return pkg


def _assert_refused(path: Path, marker: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        read_package(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message and "refused" in message
    assert "only weights are loaded" in message
    assert not marker.exists()


def test_klass_naming_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned_klass"
    path = tmp_path / "evil_klass.th"
    torch.save(_package(klass=os.system, args=(f"touch {marker}",)), path)
    _assert_refused(path, marker)
    with pytest.raises(CheckpointError, match="posix.system|nt.system"):
        read_package(path)


def test_reduce_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned_reduce"
    for where in ("kwargs", "training_args", "state"):
        path = tmp_path / f"evil_{where}.th"
        value = _Payload(f"touch {marker}")
        pkg = _package()
        if where == "kwargs":
            pkg["kwargs"] = dict(pkg["kwargs"], segment=value)
        elif where == "state":
            pkg["state"] = dict(pkg["state"], extra=value)
        else:
            pkg[where] = value
        torch.save(pkg, path)
        _assert_refused(path, marker)
    # the same payload does run under a plain unpickler: the test would notice if it had run
    assert not marker.exists()


def test_stand_in_instances_are_not_model_classes(tmp_path):
    path = tmp_path / "fraction_klass.th"
    torch.save(_package(klass=Fraction(1, 2)), path)
    with pytest.raises(CheckpointError, match="not one of the demucs model classes"):
        read_package(path)


# --- bags ----------------------------------------------------------------------------------------
def test_bag_yaml_with_checksums():
    spec = read_bag(FIXTURES / "bag_small.yaml")
    assert [p.name for p in spec.members] == ["bagsmall0-93d35b6d.th", "bagsmall1-363ad47b.th"]
    assert spec.weights == [[2.0, 1.0, 0.0, 1.0], [0.0, 1.0, 3.0, 1.0]] and spec.segment == 0.2
    bag = load_bag(FIXTURES / "bag_small.yaml")
    assert isinstance(bag, DemucsBag) and not bag.training
    assert (bag.stems, bag.sample_rate, bag.chunk_size) == (
        ("drums", "bass", "other", "vocals"),
        44100,
        8820,
    )
    assert isinstance(bag.models[0], HDemucs) and bag.models[0].segment == 0.2
    golden = load_file(str(FIXTURES / "bag_small.safetensors"))
    assert set(golden) == {"__apply_input__", "__apply_output__", "__separate_output__"}


def _bag_folder(tmp_path: Path) -> Path:
    for name in ("bag_small.yaml", "bagsmall0-93d35b6d.th", "bagsmall1-363ad47b.th"):
        shutil.copyfile(FIXTURES / name, tmp_path / name)
    return tmp_path


def test_tampered_member_is_refused(tmp_path):
    folder = _bag_folder(tmp_path)
    member = folder / "bagsmall1-363ad47b.th"
    data = bytearray(member.read_bytes())
    data[-100] ^= 1
    member.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bagsmall1-363ad47b\.th: checksum mismatch"):
        load_bag(folder / "bag_small.yaml")


def test_bag_member_lookup_rules(tmp_path):
    folder = _bag_folder(tmp_path)
    # LocalRepo splits at the last `-`; a name without `-` is a signature with no checksum
    (folder / "bagsmall1-363ad47b.th").rename(folder / "bagsmall1.th")
    assert local_repo(folder)["bagsmall1"] == (folder / "bagsmall1.th", None)
    assert local_repo(folder)["bagsmall0"][1] == "93d35b6d"
    load_bag(folder / "bag_small.yaml")
    shutil.copyfile(folder / "bagsmall1.th", folder / "bagsmall1-363ad47b.th")
    with pytest.raises(CheckpointError, match="two packages for signature 'bagsmall1'"):
        read_bag(folder / "bag_small.yaml")
    (folder / "bagsmall1.th").unlink()
    (folder / "bagsmall0-93d35b6d.th").unlink()
    with pytest.raises(CheckpointError, match="no package for signature 'bagsmall0'"):
        read_bag(folder / "bag_small.yaml")


def test_bad_bag_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: bagsmall0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: a bag YAML needs `models:`"):
        read_bag(bad)
    bad.write_text("models: [a]\nweigths: [[1]]\n")
    with pytest.raises(ConfigError, match="unknown key"):
        read_bag(bad)
    bad.write_text("models: [a\n")
    with pytest.raises(ConfigError, match="not a valid YAML"):
        read_bag(bad)


# --- DiffQ ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["diffq_hdemucs", "diffq_htdemucs_torchpack", "uniform_demucs"])
def test_quantized_packages_decode_like_diffq(case):
    """The float weights equal what demucs + diffq 0.2.4 restore (bit for bit)."""
    pkg = read_package(FIXTURES / f"{case}.th")
    expected = load_file(str(FIXTURES / f"{case}.expected.safetensors"))
    assert set(pkg.state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(pkg.state[name], value), name
    assert "diffq" not in sys.modules
    model = load_package(FIXTURES / f"{case}.th")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_quantized_state_that_does_not_fit_is_refused(tmp_path, monkeypatch):
    import types

    # pickle needs an importable diffq.diffq.DiffQuantizer to write the package back
    package, module = types.ModuleType("diffq"), types.ModuleType("diffq.diffq")
    module.DiffQuantizer = type("DiffQuantizer", (), {"__module__": "diffq.diffq"})
    monkeypatch.setitem(sys.modules, "diffq", package)
    monkeypatch.setitem(sys.modules, "diffq.diffq", module)
    pkg = _resave("diffq_hdemucs")
    pkg["state"]["meta"]["klass"] = module.DiffQuantizer
    pkg["state"]["quantized"] = pkg["state"]["quantized"][:-1]
    path = tmp_path / "short.th"
    torch.save(pkg, path)
    with pytest.raises(CheckpointError, match=r"short\.th: cannot decode the quantized"):
        read_package(path)


# --- MSST-trained HTDemucs ------------------------------------------------------------------------
# test_demucs_nn's MSST YAML, with the hop MSST's audio section also carries
MSST_YAML = {**NN_MSST_YAML, "audio": {**NN_MSST_YAML["audio"], "hop_length": 1024}}


@pytest.mark.parametrize("form", ["plain", "state", "state_dict", "model_state_dict", "module."])
def test_msst_htdemucs_checkpoint(tmp_path, form):
    RefHTDemucs = pytest.importorskip("demucs.htdemucs").HTDemucs
    state = {k: v.half() for k, v in read_package(FIXTURES / "htdemucs_4s.th").state.items()}
    if form == "plain":
        ckpt = state
    elif form == "module.":
        ckpt = {f"module.{k}": v for k, v in state.items()}
    else:
        ckpt = {form: state, "optimizer": {"lr": 1e-4}, "epoch": 3}
    path = tmp_path / "model.ckpt"
    torch.save(ckpt, path)
    assert read_state_dict(path).keys() == state.keys()
    model = load_msst(MSST_YAML, path)
    assert isinstance(model, HTDemucs) and model.use_train_segment is False
    assert (model.chunk_size, model.stems) == (8820, ("drums", "bass", "other", "vocals"))
    ref = RefHTDemucs(**dict(_kwargs(), use_train_segment=False)).eval()
    ref.load_state_dict({k: v.float() for k, v in state.items()})
    mix = 0.1 * torch.randn(1, 2, 5000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, expected = model(mix), ref(mix)
    assert out.shape == (1, 4, 2, 5000)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def _kwargs() -> dict:
    kw = dict(MSST_YAML["htdemucs"], sources=MSST_YAML["training"]["instruments"])
    kw.pop("num_subbands")
    return dict(kw, segment=0.2, samplerate=44100, audio_channels=2)


def test_msst_checkpoint_errors(tmp_path):
    path = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"encoder.0.conv.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"wrong\.ckpt: the weights do not fit"):
        load_msst(MSST_YAML, path)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": _Payload("true")}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(evil)
