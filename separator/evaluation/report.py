"""What evaluation writes: museval's per-track JSON, the summary table and the box plot.

<subset>/<track>.json   museval's per-track format (`museval.EvalStore.add_eval_dir` and
                        `MethodStore` read it), plus a "separator" key with the global SDR
summary.md / .csv       per stem: cSDR (median over tracks of the median over frames) and the
                        global (MDX) SDR averaged over tracks; ISR/SIR/SAR with metrics="all"
sdr_boxplot.png         with the `plot` extra (matplotlib)
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from separator.datasets import MUSDB_STEMS
from separator.files import atomic_write

METRICS = ("SDR", "SIR", "ISR", "SAR")
MUSEVAL_VERSION = "0.4.1"  # the format version we write (museval/aggregate.py TrackStore)


def track_json(
    frames: dict[str, dict[str, np.ndarray]], global_sdr: dict[str, float], metrics: str
) -> str:
    """museval's per-track JSON (TrackStore.json): 1 s frames, values rounded to 5 decimals,
    infinities written as NaN (TrackStore._q)."""

    def q(x: float) -> float:
        return float("nan") if math.isinf(x) else round(float(x), 5)

    targets = [
        {
            "name": stem,
            "frames": [
                {
                    "time": float(t),
                    "duration": 1.0,
                    "metrics": {m: q(per_metric[m][t]) for m in METRICS},
                }
                for t in range(len(per_metric["SDR"]))
            ],
        }
        for stem, per_metric in frames.items()
    ]
    extra = {"metrics": metrics, "global_sdr": {s: round(v, 5) for s, v in global_sdr.items()}}
    doc = {"targets": targets, "museval_version": MUSEVAL_VERSION, "separator": extra}
    return json.dumps(doc, indent=2, allow_nan=True)


def is_scored(path: Path, metrics: str) -> bool:
    """A track is already scored if its JSON exists with at least the metrics asked for."""
    if not path.is_file():
        return False
    try:
        have = json.loads(path.read_text())["separator"]["metrics"]
    except (ValueError, KeyError, TypeError):
        return False  # written by museval or damaged: score again
    return have == "all" or have == metrics


def _frame_medians(out_dir: Path, subset: str, names: Sequence[str]) -> dict[str, dict]:
    """{track: {stem: {metric: median over frames (NaN skipped)}, "global": {stem: dB}}}."""
    out = {}
    for name in names:
        doc = json.loads((out_dir / subset / f"{name}.json").read_text())
        per_stem = {}
        for target in doc["targets"]:
            values = {m: [f["metrics"][m] for f in target["frames"]] for m in METRICS}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metrics
                per_stem[target["name"]] = {
                    m: float(np.nanmedian(np.asarray(v, dtype=float))) for m, v in values.items()
                }
        out[name] = {"stems": per_stem, "global": doc.get("separator", {}).get("global_sdr", {})}
    return out


def summarize(
    out_dir: Path, subset: str, names: Sequence[str], metrics: str = "sdr"
) -> list[dict[str, Any]]:
    """Per stem: cSDR (median over tracks of frame medians, as museval EvalStore), global SDR
    (mean over tracks, as MDX/SDX), and with metrics="all" the ISR/SIR/SAR medians."""
    per_track = _frame_medians(out_dir, subset, names)
    rows = []
    for stem in _stem_order(per_track):
        scored = [t for t in per_track.values() if stem in t["stems"]]
        if not scored:
            continue
        row: dict[str, Any] = {"stem": stem, "tracks": len(scored)}
        shown = METRICS if metrics == "all" else ("SDR",)
        for m in shown:
            key = "cSDR" if m == "SDR" else m
            row[key] = float(np.nanmedian([t["stems"][stem][m] for t in scored]))
        row["global SDR"] = float(np.mean([t["global"][stem] for t in scored]))
        rows.append(row)
    if rows:
        mean = {"stem": "mean", "tracks": max(r["tracks"] for r in rows)}
        for key in rows[0]:
            if key not in mean:
                mean[key] = float(np.mean([r[key] for r in rows]))
        rows.append(mean)
    return rows


def _stem_order(per_track: dict[str, dict]) -> list[str]:
    """Stems scored in any track: MUSDB18's order first, then others as first seen."""
    seen = list(dict.fromkeys(s for t in per_track.values() for s in t["stems"]))
    return [s for s in MUSDB_STEMS if s in seen] + [s for s in seen if s not in MUSDB_STEMS]


def write_summary(rows: list[dict[str, Any]], out_dir: Path, metrics: str) -> None:
    """summary.md (Markdown table, dB) and summary.csv."""
    if not rows:
        return
    keys = list(rows[0])
    lines = [
        (
            f"Evaluation ({'all v4 metrics' if metrics == 'all' else 'SDR'}), dB: "
            "cSDR = median over tracks of the median over 1 s frames (museval); "
            "global SDR = MDX definition, mean over tracks."
        ),
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write(out_dir / "summary.md", ("\n".join(lines) + "\n").encode())
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / "summary.csv", text.getvalue().encode())


def plot_boxes(out_dir: Path, subset: str, names: Sequence[str]) -> Path | None:
    """sdr_boxplot.png: per stem, the distribution over tracks of the frame-median SDR.

    Returns None (and draws nothing) without matplotlib (`pip install separator[plot]`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    per_track = _frame_medians(out_dir, subset, names)
    stems = _stem_order(per_track)
    data = [[t["stems"][s]["SDR"] for t in per_track.values() if s in t["stems"]] for s in stems]
    data = [[v for v in d if np.isfinite(v)] for d in data]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(stems), 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(stems) + 1), stems)
    ax.set_ylabel("SDR per track (median over 1 s frames), dB")
    ax.set_title(f"{subset}: {len(per_track)} tracks")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "sdr_boxplot.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
