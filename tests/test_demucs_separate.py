"""Demucs models end to end: `separate`/`Separator` against `demucs.api.Separator` (demucs 4.1.0)
on the same weights, the loading routes (.th, bag YAML, cards), the demucs flags, and
`separate --model htdemucs` from the loopback server (download, sha256-prefix check, load,
stream). The pretrained cards are checked against demucs's own list of names and files.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import separator
from separator.cli import separate_main
from separator.errors import SeparatorError
from separator.inference.apply_model import shift_offsets
from separator.zoo import all_cards, catalog
from separator.zoo.cards import ModelCard
from separator.zoo.demucs import read_package
from tests.test_demucs_nn import _randomize

demucs = pytest.importorskip("demucs")
from demucs.api import Separator as DemucsSeparator  # noqa: E402
from demucs.demucs import Demucs as RefDemucs  # noqa: E402
from demucs.hdemucs import HDemucs as RefHDemucs  # noqa: E402
from demucs.htdemucs import HTDemucs as RefHTDemucs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread

FIXTURES = Path(__file__).parent / "fixtures" / "demucs"
REFS = {"htdemucs": RefHTDemucs, "hdemucs": RefHDemucs, "demucs": RefDemucs}
PRETRAINED = ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra",
              "mdx_q", "mdx_extra_q"]  # fmt: skip
TINY = {
    "htdemucs": dict(channels=4, nfft=512, depth=2, t_layers=1, t_heads=2, dconv_comp=2,
                     segment=Fraction(1, 5)),
    "hdemucs": dict(channels=4, nfft=256, depth=3, dconv_comp=2, segment=0.2),
    "demucs": dict(channels=4, depth=3, dconv_comp=2, segment=0.2),
}  # fmt: skip


def package_bytes(klass: str, kwargs: dict, seed: int, scale: bool = True) -> bytes:
    """A random-weight demucs package, as demucs writes releases (fp16 state, pickled class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = REFS[klass](**kwargs)
    if scale:
        _randomize(model, torch.Generator().manual_seed(seed))
    pkg = {
        "klass": REFS[klass],
        "args": (),
        "kwargs": kwargs,
        "state": {k: v.half() for k, v in model.state_dict().items()},
        "training_args": {"model": klass},
        "metrics": (None, None),
    }
    buffer = io.BytesIO()
    torch.save(pkg, buffer)
    return buffer.getvalue()


def write_package(folder: Path, sig: str, body: bytes, signed: bool = True) -> Path:
    """`<sig>-<sha256 prefix>.th` (demucs's signed release name) or `<sig>.th`."""
    name = f"{sig}-{hashlib.sha256(body).hexdigest()[:8]}.th" if signed else f"{sig}.th"
    (folder / name).write_bytes(body)
    return folder / name


def demucs_separate(repo: Path, name: str, wav: torch.Tensor, offsets, monkeypatch, **kwargs):
    """demucs.api.Separator(name, repo).separate_tensor, shifts drawn from `offsets`."""
    draws = iter(offsets)
    sep = DemucsSeparator(model=name, repo=repo, device="cpu", **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(random, "randint", lambda a, b: next(draws))
        _, stems = sep.separate_tensor(wav, 44100)
    assert next(draws, None) is None
    return stems


def read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0]


# --- separate / Separator vs demucs.api.Separator ------------------------------------------------
@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    klass=st.sampled_from(sorted(TINY)),
    frames=st.integers(3000, 30000),
    channels=st.sampled_from([1, 2]),
    seed=st.integers(0, 1000),
)
def test_cli_equals_demucs_separator(klass, frames, channels, seed, tmp_path_factory, monkeypatch):
    """`separate --model x.th --shifts 0` writes what demucs.api.Separator returns (mono input
    is run as stereo and its stems come back mono, as the mean of the two channels)."""
    tmp = tmp_path_factory.mktemp("cli")
    kwargs = dict(TINY[klass], sources=["drums", "bass", "other", "vocals"])
    package = write_package(tmp, "abcdef12", package_bytes(klass, kwargs, seed))
    wav = 0.2 * torch.randn(channels, frames, generator=torch.Generator().manual_seed(seed))
    sf.write(tmp / "song.wav", wav.numpy().T, 44100, subtype="FLOAT")
    argv = [str(tmp / "song.wav"), "--model", str(package), "--shifts", "0", "-o", str(tmp),
            "--bits", "32", "--clip", "none", "-q", "--filename", "{stem}.{ext}"]  # fmt: skip
    assert separate_main(argv) == 0
    stereo = wav.expand(2, -1) if channels == 1 else wav
    expected = demucs_separate(tmp, "abcdef12", stereo, [], monkeypatch, shifts=0)
    for stem, ref in expected.items():
        ref = ref.mean(0, keepdim=True) if channels == 1 else ref
        np.testing.assert_allclose(read(tmp / f"{stem}.wav"), ref.numpy().T, atol=1e-5, rtol=0)


def test_separator_with_shifts_equals_demucs_separator(tmp_path, monkeypatch):
    """Shifts from our seeded generator; demucs is handed the same offsets."""
    kwargs = dict(TINY["htdemucs"], sources=["drums", "bass", "other", "vocals"])
    package = write_package(tmp_path, "0123abcd", package_bytes("htdemucs", kwargs, 4))
    wav = 0.2 * torch.randn(2, 20000, generator=torch.Generator().manual_seed(4))
    sep = separator.Separator(separator.load_model(package), device="cpu", shifts=2, seed=9)
    ours = sep.separate_tensor(wav, 44100)
    offsets = shift_offsets(1, 2, 22050, None, seed=9)[0]
    expected = demucs_separate(tmp_path, "0123abcd", wav, offsets, monkeypatch, shifts=2)
    for stem, ref in expected.items():
        torch.testing.assert_close(ours[stem], ref, atol=1e-5, rtol=0)


def test_cli_on_the_bag_yaml_equals_the_golden_separator_output(tmp_path):
    from safetensors.torch import load_file

    golden = load_file(str(FIXTURES / "bag_small.safetensors"))
    sf.write(tmp_path / "mix.wav", golden["__apply_input__"][0].numpy().T, 44100, subtype="FLOAT")
    argv = [str(tmp_path / "mix.wav"), "-n", str(FIXTURES / "bag_small.yaml"), "--shifts", "0",
            "-o", str(tmp_path), "--float32", "--clip", "none", "-q"]  # fmt: skip
    assert separate_main(argv) == 0
    for k, stem in enumerate(["drums", "bass", "other", "vocals"]):
        out = read(tmp_path / "bag_small" / "mix" / f"{stem}.wav")
        expected = golden["__separate_output__"][0, k].numpy().T
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_demucs_flags_errors_name_the_flags(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.zeros((4410, 2), np.float32), 44100)
    argv = [str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "-q"]
    th = str(FIXTURES / "htdemucs_4s.th")  # an HTDemucs trained on 0.2 s
    assert separate_main(argv + ["--model", th, "--segment", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--segment 1" in err and "at most the 0.2 s" in err
    assert separate_main(argv + ["--shifts", "2"]) == 2  # the default model: overlap-add
    err = capsys.readouterr().err
    assert "--shifts needs a model with the apply_model pipeline" in err
    assert separate_main(argv + ["--model", th, "--segment", "0.1", "--shifts", "3"]) == 0


# --- loading routes ------------------------------------------------------------------------------
def test_th_package_alone_brings_its_card_and_checks_its_name(tmp_path):
    body = (FIXTURES / "hdemucs_v3.th").read_bytes()
    signed = write_package(tmp_path, "feed0001", body)
    model = separator.load_model(signed)
    assert model.pipeline.apply_model and model.pipeline.normalize
    assert (model.stems, model.chunk_size) == (("drums", "bass", "other", "vocals"), 11025)
    bad = tmp_path / "feed0002-00000000.th"
    shutil.copyfile(signed, bad)
    with pytest.raises(SeparatorError, match=r"feed0002-00000000\.th does not match.*00000000"):
        separator.load_model(bad)
    named = tmp_path / "my-model.th"  # a name whose tail is no hex: nothing to check
    shutil.copyfile(signed, named)
    assert separator.load_model(named).chunk_size == 11025


def test_a_card_with_architecture_demucs(tmp_path):
    package = write_package(tmp_path, "abcd0001", (FIXTURES / "demucs_v2.th").read_bytes())
    pkg = read_package(package)
    card = {
        "name": "my_demucs",
        "architecture": "demucs",
        "model": {"klass": "demucs", "kwargs": dict(pkg.kwargs)},
        "stems": list(pkg.kwargs["sources"]),
        "sample_rate": 44100,
        "chunk_size": 11025,
        "weights": {"file": package.name, "sha256_prefix": package.stem.split("-")[1]},
        "pipeline": {"shifts": 0},
    }
    (tmp_path / "my_demucs.yaml").write_text(yaml.safe_dump(card))
    model = separator.load_model(tmp_path / "my_demucs.yaml")
    assert model.pipeline.shifts == 0 and model.pipeline.overlap == 0.25
    card["model"]["kwargs"]["normalize"] = False  # the package says True: it wins, named
    (tmp_path / "my_demucs.yaml").write_text(yaml.safe_dump(card))
    with pytest.warns(UserWarning, match="package's normalize differ"):
        assert separator.load_model(tmp_path / "my_demucs.yaml").normalize is True


def test_msst_yaml_with_a_demucs_package_builds_from_the_yaml(tmp_path):
    """MSST loads official `.th` files into the model its YAML describes (here without the
    training-length padding); the package's pickled class is read with the stand-ins."""
    from tests.test_demucs_package import MSST_YAML

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(MSST_YAML))
    model = separator.load_model(tmp_path / "cfg.yaml", FIXTURES / "htdemucs_4s.th")
    assert model.use_train_segment is False and not model.pipeline.apply_model


# --- the pretrained names ------------------------------------------------------------------------
def _remote() -> tuple[dict[str, str], Path]:
    root_dir = Path(demucs.__file__).parent / "remote"
    urls, root = {}, ""
    for line in (root_dir / "files.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            urls[line.split("-")[0]] = f"https://dl.fbaipublicfiles.com/demucs/{root}{line}"
    return urls, root_dir


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_cards_match_demucs_remote(name):
    """Members, file URLs (with the sha256 prefix in their names), bag weights and segment are
    demucs's own (demucs/remote/<name>.yaml and files.txt)."""
    urls, root = _remote()
    bag = yaml.safe_load((root / f"{name}.yaml").read_text())
    card = all_cards()[name]
    assert isinstance(card, ModelCard) and card.architecture == "demucs"
    entries = card.weight_entries
    assert [urls[sig] for sig in bag["models"]] == [e["url"] for e in entries]
    for e in entries:
        assert e["url"].endswith(f"-{e['sha256_prefix']}.th") and len(e["sha256_prefix"]) == 8
    model = card.model
    members = model.get("models", [model])
    assert len(members) == len(bag["models"])
    if len(members) > 1:
        assert model.get("weights") == bag.get("weights") and model["segment"] == bag.get("segment")
    elif "segment" in bag:
        assert members[0]["kwargs"]["segment"] == bag["segment"]
    assert card.spec.apply_model and card.spec.normalize and card.spec.shifts == 1


# --- separate --model htdemucs from the loopback server ------------------------------------------
def _serve_htdemucs(server, folder: Path, body: bytes, name: str) -> Path:
    """A copy of the shipped htdemucs card whose URL points at the loopback server."""
    data = yaml.safe_load(all_cards()["htdemucs"].path.read_text())
    server.files[f"/demucs/hybrid_transformer/{name}"] = body
    data["weights"] = {"url": server.url(f"/demucs/hybrid_transformer/{name}"),
                       "sha256_prefix": name.removesuffix(".th").split("-")[1]}  # fmt: skip
    folder.mkdir(exist_ok=True)
    (folder / "htdemucs.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _htdemucs_end_to_end(server, cache, tmp_path, monkeypatch, body: bytes, song: Path):
    sig = f"955717e8-{hashlib.sha256(body).hexdigest()[:8]}.th"
    cards = _serve_htdemucs(server, tmp_path / "cards", body, sig)
    monkeypatch.setattr(catalog, "models_dir", lambda: cards)
    out = tmp_path / "out"
    argv = [str(song), "--model", "htdemucs", "-o", str(out), "--float32", "--clip", "none", "-q"]
    assert separate_main(argv) == 0
    cached = cache / "htdemucs" / sig
    assert cached.read_bytes() == body and server.requests[-1][0].endswith(sig)
    written = {p.stem: read(p) for p in (out / "htdemucs" / "song").glob("*.wav")}
    assert sorted(written) == ["bass", "drums", "other", "vocals"]
    assert all(w.shape == read(song).shape for w in written.values())
    # the real name's sha256 prefix does not fit these bytes: refused, nothing kept
    _serve_htdemucs(server, cards, body, "955717e8-8726e21a.th")
    assert separate_main(argv + ["--force"]) == 2
    assert not (cache / "htdemucs" / "955717e8-8726e21a.th").exists()
    return cached, written


def test_separate_htdemucs_from_the_loopback_server(server, cache, tmp_path, monkeypatch):
    """The shipped card (URL moved to 127.0.0.1) with a small random package behind it: the
    package's own kwargs build the model, as demucs does, and the difference is named."""
    kwargs = dict(TINY["htdemucs"], sources=["drums", "bass", "other", "vocals"])
    body = package_bytes("htdemucs", kwargs, 5)
    song = tmp_path / "song.wav"
    sf.write(song, 0.2 * np.random.default_rng(1).normal(size=(30000, 2)), 44100, "FLOAT")
    with pytest.warns(UserWarning, match="differ from the card"):
        cached, written = _htdemucs_end_to_end(server, cache, tmp_path, monkeypatch, body, song)
    model = separator.load_model(cached)
    expected = separator.Separator(model, device="cpu").separate_tensor(
        torch.from_numpy(read(song).T.copy()), 44100
    )
    for stem, wav in written.items():
        np.testing.assert_array_equal(wav, expected[stem].numpy().T)


@pytest.mark.slow
def test_separate_htdemucs_full_size_equals_demucs(server, cache, tmp_path, monkeypatch):
    """The real htdemucs architecture (random weights, 84 MB) end to end, equal to
    demucs.api.Separator with the same shift offset."""
    kwargs = dict(all_cards()["htdemucs"].model["kwargs"], segment=Fraction(39, 5))
    torch.manual_seed(0)
    body = package_bytes("htdemucs", kwargs, 0, scale=False)
    song = tmp_path / "song.wav"
    sf.write(song, 0.2 * np.random.default_rng(2).normal(size=(2 * 44100, 2)), 44100, "FLOAT")
    cached, written = _htdemucs_end_to_end(server, cache, tmp_path, monkeypatch, body, song)
    offsets = shift_offsets(1, 1, 22050, None, seed=0)[0]
    wav = torch.from_numpy(read(song).T.copy())
    expected = demucs_separate(cached.parent, "955717e8", wav, offsets, monkeypatch)
    for stem, ref in expected.items():
        np.testing.assert_allclose(written[stem], ref.numpy().T, atol=1e-5, rtol=0)
    assert os.environ.get("SEPARATOR_OFFLINE") is None
