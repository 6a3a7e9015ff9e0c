"""`separator evaluate` end to end on a small MUSDB18HQ-layout folder built from real stems."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from stems_example import MUSDB_STEMS, example_stems, import_museval

from separator.cli import main
from separator.evaluation.metrics import sdr
from separator.evaluation.runner import evaluate_dataset


def write(path: Path, audio: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T.astype(np.float32), rate, subtype="FLOAT")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """ROOT/test/<track>/*.wav for two tracks and ESTIMATES/<track>/<stem>.wav."""
    stems, rate = example_stems()
    base = tmp_path_factory.mktemp("musdb")
    root, est_dir = base / "musdbhq", base / "estimates"
    rng = np.random.default_rng(0)
    tracks = {
        "A - Full": {s: stems[s] for s in MUSDB_STEMS},
        "B - Excerpt": {s: 0.7 * stems[s][:, rate : 5 * rate + 123] for s in MUSDB_STEMS},
    }
    for name, refs in tracks.items():
        write(root / "test" / name / "mixture.wav", sum(refs.values()), rate)
        for i, (stem, ref) in enumerate(refs.items()):
            write(root / "test" / name / f"{stem}.wav", ref, rate)
            other = refs[MUSDB_STEMS[(i + 1) % 4]]
            est = 0.85 * ref + 0.1 * other + 0.01 * rng.standard_normal(ref.shape)
            write(est_dir / name / f"{stem}.wav", est[:, :-50], rate)  # short: padded
    (root / "train").mkdir()
    return root, est_dir, rate


def test_evaluate_estimates_matches_museval_aggregation(dataset, tmp_path):
    museval = import_museval()
    root, est_dir, _ = dataset
    out = tmp_path / "eval"
    rc = main(["evaluate", str(root), "--estimates", str(est_dir), "-o", str(out),
               "--metrics", "all"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in (out / "test").glob("*.json")) == [
        "A - Full.json", "B - Excerpt.json"
    ]  # fmt: skip
    doc = json.loads((out / "test" / "A - Full.json").read_text())
    assert [t["name"] for t in doc["targets"]] == list(MUSDB_STEMS)
    assert len(doc["targets"][0]["frames"]) == 6
    store = museval.EvalStore()
    store.add_eval_dir(out)
    theirs = store.agg_frames_tracks_scores()
    with open(out / "summary.csv") as f:
        rows = {r["stem"]: r for r in csv.DictReader(f)}
    for stem in MUSDB_STEMS:
        assert float(rows[stem]["cSDR"]) == pytest.approx(theirs[(stem, "SDR")], abs=1e-9)
        for metric in ("SIR", "ISR", "SAR"):
            assert float(rows[stem][metric]) == pytest.approx(theirs[(stem, metric)], abs=1e-9)
    assert (out / "sdr_boxplot.png").stat().st_size > 1000
    assert "| vocals |" in (out / "summary.md").read_text()


def test_resume_and_sdr_only(dataset, tmp_path):
    root, est_dir, _ = dataset
    out = tmp_path / "eval"
    first = evaluate_dataset(root, out, estimates=est_dir, progress=False, plot=False)
    assert first.scored == ["A - Full", "B - Excerpt"] and first.skipped == []
    assert set(first.rows[0]) == {"stem", "tracks", "cSDR", "global SDR"}
    again = evaluate_dataset(root, out, estimates=est_dir, progress=False, plot=False)
    assert again.scored == [] and again.skipped == ["A - Full", "B - Excerpt"]
    assert again.rows == first.rows
    upgraded = evaluate_dataset(root, out, estimates=est_dir, metrics="all", progress=False,
                                plot=False, tracks=["B - Excerpt"])  # fmt: skip
    assert upgraded.scored == ["B - Excerpt"]
    doc = json.loads((out / "test" / "A - Full.json").read_text())
    assert np.isnan(doc["targets"][0]["frames"][0]["metrics"]["SIR"])  # SDR-only stays so


class ScaledMixture:
    """Stand-in for separator.inference.Separator: every stem is a quarter of the mixture."""

    stems = ("vocals", "drums", "bass", "other")

    def separate_tensor(
        self, wav: torch.Tensor, sample_rate: int, stems=None
    ) -> dict[str, torch.Tensor]:
        assert wav.ndim == 2 and sample_rate == 44100
        return {s: 0.25 * wav for s in (stems or self.stems)}


def test_model_path_with_injected_separator(dataset, tmp_path):
    root, _, _ = dataset
    out = tmp_path / "eval"
    report = evaluate_dataset(root, out, separator=ScaledMixture(), tracks=["A - Full"],
                              progress=False, plot=False)  # fmt: skip
    assert report.scored == ["A - Full"]
    mixture, _ = sf.read(root / "test" / "A - Full" / "mixture.wav", always_2d=True)
    ref, _ = sf.read(root / "test" / "A - Full" / "vocals.wav", always_2d=True)
    expected = float(sdr(ref.T, 0.25 * mixture.T))
    doc = json.loads((out / "test" / "A - Full.json").read_text())
    assert doc["separator"]["global_sdr"]["vocals"] == pytest.approx(expected, abs=1e-4)
    vocals = next(r for r in report.rows if r["stem"] == "vocals")
    assert vocals["global SDR"] == pytest.approx(expected, abs=1e-4)


def test_user_errors_are_one_line(dataset, tmp_path, capsys):
    root, est_dir, _ = dataset
    rc = main(["evaluate", str(root), "--estimates", str(tmp_path / "nope"), "-o",
               str(tmp_path / "o"), "--no-plot"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "nope" in err and "\n" not in err
    rc = main(["evaluate", str(root), "--estimates", str(est_dir), "--metrics", "bogus",
               "-o", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2 and "'sdr' or 'all'" in capsys.readouterr().err
    rc = main(["evaluate", str(root), "-o", str(tmp_path / "o")])
    assert (
        rc == 2 and "exactly one of --model, --estimates or --baseline" in capsys.readouterr().err
    )
    rc = main(["evaluate", str(root), "--estimates", str(est_dir), "--tracks", "Nobody",
               "-o", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2 and "Nobody" in capsys.readouterr().err


def _global(out: Path, track: str) -> dict[str, float]:
    return json.loads((out / "test" / f"{track}.json").read_text())["separator"]["global_sdr"]


def test_scaled_mixture_baseline_uses_the_optimal_gain(dataset, tmp_path):
    root, _, _ = dataset
    rc = main(["evaluate", str(root), "--baseline", "scaled-mixture", "--tracks", "A - Full",
               "-o", str(tmp_path / "b"), "--no-plot"])  # fmt: skip
    assert rc == 0
    mix = sf.read(root / "test" / "A - Full" / "mixture.wav", always_2d=True)[0].T
    got = _global(tmp_path / "b", "A - Full")
    for stem in MUSDB_STEMS:
        ref = sf.read(root / "test" / "A - Full" / f"{stem}.wav", always_2d=True)[0].T
        gain = np.sum(mix * ref) / np.sum(mix * mix)
        assert got[stem] == pytest.approx(float(sdr(ref, gain * mix)), abs=1e-4)
        # the optimum: any other gain scores lower
        for g in (0.9 * gain, 1.1 * gain, 1.0):
            assert float(sdr(ref, g * mix)) < got[stem] + 1e-6
    rc = main(["evaluate", str(root), "--baseline", "mixture", "--tracks", "A - Full",
               "-o", str(tmp_path / "m"), "--no-plot"])  # fmt: skip
    assert rc == 0
    ref = sf.read(root / "test" / "A - Full" / "vocals.wav", always_2d=True)[0].T
    assert _global(tmp_path / "m", "A - Full")["vocals"] == pytest.approx(
        float(sdr(ref, mix)), abs=1e-4
    )


def test_other_stems_and_stem_map(dataset, tmp_path):
    """Reference stems guitar/rest (FoF layout): rest is scored against a sum of model stems."""
    root, _, rate = dataset
    src = root / "test" / "A - Full"
    refs = {s: sf.read(src / f"{s}.wav", always_2d=True)[0].T for s in MUSDB_STEMS}
    other_root = tmp_path / "fof"
    write(other_root / "test" / "Song" / "mixture.wav", sum(refs.values()), rate)
    write(other_root / "test" / "Song" / "guitar.wav", refs["other"], rate)
    rest = refs["vocals"] + refs["drums"] + refs["bass"]
    write(other_root / "test" / "Song" / "rest.wav", rest, rate)
    out = tmp_path / "ev"
    report = evaluate_dataset(other_root, out, separator=ScaledMixture(), stems=["guitar", "rest"],
                              stem_map={"guitar": ("other",), "rest": ("vocals", "drums", "bass")},
                              progress=False, plot=False)  # fmt: skip
    mix = sum(refs.values())
    got = _global(out, "Song")
    assert got["guitar"] == pytest.approx(float(sdr(refs["other"], 0.25 * mix)), abs=1e-4)
    assert got["rest"] == pytest.approx(float(sdr(rest, 0.75 * mix)), abs=1e-4)
    assert [r["stem"] for r in report.rows] == ["guitar", "rest", "mean"]
