"""Build the training and evaluation data of the embedded default model from Debian and PyPI
packages only (no MUSDB18, no downloads from dataset hosts).

    sudo apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont planetblupi-music-midi \
        musescore-general-soundfont avldrums.lv2-soundfont \
        hydrogen fretsonfire-songs-sectoid fretsonfire-songs-muldjord ffmpeg
    pip install music21 mido stempeg
    python3 recipes/default/build_data.py data/default

Writes MUSDB18HQ-layout folders (`<track>/{mixture,vocals,drums,bass,other}.wav`):

    rendered/{train,valid,test}/   scores and MIDI rendered one part per stem, the way Slakh2100
                                   was made: Bach chorales from the music21 corpus (soprano sung by
                                   a GM voice/choir patch, alto and tenor on random GM instruments,
                                   bass on a GM bass, plus a generated drum part) and the
                                   planetblupi game MIDI files (drums on channel 10, GM basses, the
                                   highest melodic part re-voiced as "vocals"); Hydrogen's demo
                                   songs as extra real-sample drum stems (train only). A second
                                   set (`--extra`, train only) renders chorales the first set did
                                   not draw, and the planetblupi training files again, with a third
                                   soundfont (MuseScore General) and drums from it or from the AVL
                                   kits (multi-sampled real acoustic drum kits): more timbres.
    real/stempeg/                  the real 4-stem excerpt that ships with stempeg.
    real/fof/                      the Frets on Fire songs: guitar.wav (lead guitar), rest.wav
                                   (everything else) and their sum, mixture.wav.
    manifest.json                  every source with its package, version and licence, and for
                                   each rendered track its score, soundfont, programs and tempo.

Everything is a function of the package contents and `--seed`; rerunning gives the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

from separator.datasets import write_track

RATE = 44100
STEMS = ("vocals", "drums", "bass", "other")
SOUNDFONTS = {
    "FluidR3_GM": Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "TimGM6mb": Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    "MuseScore_General": Path("/usr/share/sounds/sf3/MuseScore_General_Full.sf3"),
    "AVL_Black_Pearl": Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"),
    "AVL_Red_Zeppelin": Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"),
}
# The AVL kits hold one drum kit as melodic preset 0-0 with the GM drum note map: their drum
# stems are rendered on channel 1 instead of 10 (fluidsynth plays channel 10 from bank 128).
AVL_KITS = ("AVL_Black_Pearl", "AVL_Red_Zeppelin")
PLANETBLUPI = Path("/usr/share/planetblupi/music")
HYDROGEN_SONGS = Path("/usr/share/hydrogen/data/demo_songs")
FOF = Path("/usr/share/games/fretsonfire/data/songs")

# General MIDI program numbers (0-based).
VOICE_PROGRAMS = (52, 53, 54, 85)  # choir aahs, voice oohs, synth voice, lead 6 (voice)
BASS_PROGRAMS = tuple(range(32, 40))  # acoustic .. synth bass 2
OTHER_PROGRAMS = (
    tuple(range(0, 6))  # pianos, e-pianos
    + (6, 11, 16, 17, 19, 21)  # harpsichord, vibraphone, organs, accordion
    + tuple(range(24, 31))  # guitars
    + (40, 41, 42, 46, 48, 49, 50)  # strings, harp, ensembles
    + (56, 57, 60, 61, 65, 66, 68, 71, 73)  # brass, reeds, pipes
    + (80, 81, 88, 89, 90, 91)  # synth leads and pads
)
DRUM_KITS = {  # bank-128 presets
    "FluidR3_GM": (0, 8, 16, 24, 25, 32, 40),
    "TimGM6mb": (0,),
    "MuseScore_General": (0, 8, 16, 24, 25, 32, 40),
}
STEM_DB = {"vocals": -17.0, "drums": -18.0, "bass": -19.0, "other": -19.0}  # mean level, ±3 dB

SOURCES = {
    "music21": (
        "PyPI music21 corpus (J. S. Bach chorales)",
        "BSD-3-Clause (scores: public domain)",
    ),
    "planetblupi-music-midi": ("Debian", "GPL-3+ (see /usr/share/doc/planetblupi-music-midi)"),
    "fluid-soundfont-gm": ("Debian, FluidR3_GM.sf2 by Frank Wen", "MIT"),
    "timgm6mb-soundfont": ("Debian, TimGM6mb.sf2 by Tim Brechbill", "GPL-2"),
    "musescore-general-soundfont": (
        "Debian, MuseScore_General.sf3 by S. Christian Collins",
        "MIT (parts public domain or CC0)",
    ),
    "avldrums.lv2-soundfont": ("Debian, AVL drum kits by Glen MacArthur", "CC BY-SA 3.0"),
    "hydrogen-data": ("Debian, Hydrogen demo songs", "GPL-2+ (see /usr/share/doc/hydrogen-data)"),
    "hydrogen-drumkits": ("Debian, Hydrogen drum kits", "GPL-2+/CC (per kit, see its copyright)"),
    "fretsonfire-songs-sectoid": ("Debian, songs by Sectoid", "MIT-style (Expat)"),
    "fretsonfire-songs-muldjord": ("Debian, songs by Lars Muldjord", "CC BY-SA 3.0"),
    "stempeg": ("PyPI stempeg example (The Easton Ellises - Falcon 69)", "CC BY-NC-SA 4.0"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--chorales", type=int, default=240, help="Bach chorales to render")
    p.add_argument("--valid", type=int, default=8, help="chorales held out for validation")
    p.add_argument("--test", type=int, default=16, help="chorales held out for testing")
    p.add_argument(
        "--extra", type=int, default=120, help="further chorales for training, third soundfont"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    _check_tools()
    out: Path = args.out
    rng = np.random.default_rng(args.seed)

    jobs, spare = _chorale_jobs(args, rng)
    jobs += _planetblupi_jobs(rng)
    hydrogen = zip(sorted(HYDROGEN_SONGS.glob("*.h2song")), rng.integers(1 << 31, size=100))
    midi = [j["path"] for j in jobs if j["kind"] == "midi" and j["split"] == "train"]
    jobs += _extra_jobs(spare[: args.extra], midi, rng)  # drawn last: the first set stays as is
    manifest = {"sources": _sources(), "tracks": []}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_render_job, job, str(out / "rendered")) for job in jobs]
        futures += [
            pool.submit(_hydrogen_job, song, str(out / "rendered" / "train"), int(seed))
            for song, seed in hydrogen
        ]
        for f in futures:
            info = f.result()
            manifest["tracks"].append(info)
            print(f"{info['split']:5s} {info['name']}  {info['seconds']:.0f} s", flush=True)
    _real(out / "real")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(t["seconds"] for t in manifest["tracks"] if t["split"] == "train")
    print(
        f"done: {len(manifest['tracks'])} rendered tracks, {total / 3600:.2f} h of training audio"
    )
    return 0


def _check_tools() -> None:
    missing = [name for name in ("fluidsynth", "h2cli", "ffmpeg") if shutil.which(name) is None] + [
        str(p) for p in (*SOUNDFONTS.values(), PLANETBLUPI, HYDROGEN_SONGS, FOF) if not p.exists()
    ]
    if missing:
        sys.exit(f"build_data: missing {', '.join(missing)}; see the apt-get line in this script")


def _sources() -> list[dict]:
    out = []
    for package, (what, licence) in SOURCES.items():
        query = ["dpkg-query", "-W", "-f", "${Version}", package]
        version = subprocess.run(query, capture_output=True, text=True).stdout.strip()
        if not version:
            try:
                from importlib.metadata import version as pkg_version

                version = pkg_version(package)
            except Exception:
                version = "?"
        out.append({"package": package, "version": version, "what": what, "licence": licence})
    return out


# ---- jobs: a job is a plain dict of everything one track needs, so workers are pure functions


def _chorale_jobs(args: argparse.Namespace, rng: np.random.Generator):
    """Jobs of the first set, and the chorale paths it did not draw (in random order)."""
    from music21 import corpus

    paths = sorted(str(p) for p in corpus.getComposer("bach") if str(p).endswith((".mxl", ".xml")))
    order = rng.permutation(len(paths))
    jobs = []
    n = args.chorales + args.valid + args.test
    for rank, i in enumerate(order[: int(n * 1.3)]):  # some files are not four-part: spare ones
        split = (
            "test" if rank < args.test else "valid" if rank < args.test + args.valid else "train"
        )
        jobs.append(
            {
                "kind": "chorale",
                "path": paths[i],
                "split": split,
                "seed": int(rng.integers(1 << 31)),
            }
        )
    return jobs, [paths[i] for i in order[int(n * 1.3) :]]


def _planetblupi_jobs(rng: np.random.Generator) -> list[dict]:
    files = sorted(PLANETBLUPI.glob("*.mid"))
    splits = ["train"] * (len(files) - 3) + ["valid", "test", "test"]
    return [
        {"kind": "midi", "path": str(f), "split": s, "seed": int(rng.integers(1 << 31))}
        for f, s in zip(files, splits)
    ]


def _extra_jobs(chorales: list[str], midi: list[str], rng: np.random.Generator) -> list[dict]:
    """The second, training-only set: unused chorales and the planetblupi training files again,
    on MuseScore General, with the drums from it or (half the time) from an AVL kit."""
    extra = [{"kind": "chorale", "path": p} for p in chorales]
    extra += [{"kind": "midi", "path": p} for p in midi]
    for job in extra:
        kit = rng.choice(["MuseScore_General", *AVL_KITS], p=[0.5, 0.25, 0.25])
        job.update(split="train", seed=int(rng.integers(1 << 31)), tag="ms")
        job.update(font="MuseScore_General", drum_font=str(kit))
    return extra


def _render_job(job: dict, root: str) -> dict:
    rng = np.random.default_rng(job["seed"])
    font = job.get("font") or ("FluidR3_GM" if rng.random() < 0.7 else "TimGM6mb")
    drum_font = job.get("drum_font", font)
    if job["kind"] == "chorale":
        parts, info = _chorale_events(job["path"], rng, font)
    else:
        parts, info = _midi_events(job["path"], rng, font)
    name = f"{job['kind']}-{Path(job['path']).name.rsplit('.', 1)[0]}"
    name += f"-{job['tag']}" if "tag" in job else ""
    if parts is None:
        return {"name": name, "split": "skipped", "seconds": 0.0, **info}
    folder = Path(root) / job["split"] / name
    if _complete(folder):  # an earlier, interrupted build wrote it: the same job gives the same
        seconds = sf.info(str(folder / "mixture.wav")).duration
    else:
        fonts = {stem: drum_font if stem == "drums" else font for stem in parts}
        stems = _level({stem: _render(ev, fonts[stem]) for stem, ev in parts.items()}, rng)
        _write(folder, stems)
        seconds = next(iter(stems.values())).shape[1] / RATE
    info = {**info, "drum_soundfont": drum_font} if drum_font != font else info
    return {"name": name, "split": job["split"], "seconds": seconds, "soundfont": font, **info}


# ---- scores and MIDI -> per-stem event lists: [(seconds, mido.Message)]


def _chorale_events(path: str, rng: np.random.Generator, font: str):
    from music21 import converter

    score = converter.parse(path)
    parts = list(score.parts)
    info = {"source": f"music21:{Path(path).name}"}
    if len(parts) != 4:
        return None, {**info, "reason": f"{len(parts)} parts"}
    bpm = float(rng.uniform(66, 126))
    beat = 60.0 / bpm
    programs = {
        "vocals": int(rng.choice(VOICE_PROGRAMS)),
        "alto": int(rng.choice(OTHER_PROGRAMS)),
        "tenor": int(rng.choice(OTHER_PROGRAMS)),
        "bass": int(rng.choice(BASS_PROGRAMS)),
    }
    events: dict[str, list] = {s: [] for s in STEMS}
    layout = (
        ("vocals", "vocals", 0, 0),
        ("alto", "other", 1, 0),
        ("tenor", "other", 2, 0),
        ("bass", "bass", 3, -12 * int(rng.random() < 0.3)),
    )
    for part, (role, stem, channel, shift) in zip(parts, layout):
        ev = events[stem]
        ev.append((0.0, mido.Message("program_change", channel=channel, program=programs[role])))
        pan = 64 if stem != "other" else int(rng.integers(24, 104))
        ev.append((0.0, mido.Message("control_change", channel=channel, control=10, value=pan)))
        base = int(rng.integers(70, 112))
        for n in part.stripTies().flatten().notes:
            start = float(n.offset) * beat
            length = max(0.05, float(n.quarterLength) * beat * 0.95)
            for pitch in n.pitches:
                key = int(np.clip(pitch.midi + shift, 0, 127))
                vel = int(np.clip(base + rng.integers(-10, 11), 1, 127))
                ev.append((start, mido.Message("note_on", channel=channel, note=key, velocity=vel)))
                ev.append((start + length, mido.Message("note_off", channel=channel, note=key)))
    length = float(score.highestTime) * beat
    signatures = score.recurse().getElementsByClass("TimeSignature")
    per_bar = signatures[0].numerator if signatures else 4
    kit = int(rng.choice(DRUM_KITS[font]))
    events["drums"] = _drum_part(length, beat, per_bar, kit, rng)
    info.update(bpm=round(bpm, 1), programs=programs, drum_kit=kit)
    return events, info


def _drum_part(length: float, beat: float, per_bar: int, kit: int, rng: np.random.Generator):
    """A generated GM drum part (channel 10): a groove from a few common styles with fills
    every 4 or 8 bars, crashes after fills, humanised timing and velocity."""
    style = rng.choice(["rock", "half", "ride", "sixteen", "four"])
    fill_every = int(rng.choice([4, 8]))
    start_bar = int(rng.integers(0, 3))  # drums often enter after a bar or two
    ev = [(0.0, mido.Message("program_change", channel=9, program=kit))]

    def hit(t: float, note: int, vel: float) -> None:
        t = max(0.0, t + rng.normal(0, 0.004))
        v = int(np.clip(vel + rng.normal(0, 8), 1, 127))
        ev.append((t, mido.Message("note_on", channel=9, note=note, velocity=v)))
        ev.append((t + 0.08, mido.Message("note_off", channel=9, note=note)))

    bar = per_bar * beat
    bars = int(np.ceil(length / bar))
    for b in range(start_bar, bars):
        t0 = b * bar
        if (b + 1) % fill_every == 0:  # a tom fill of sixteenths over the last two beats
            toms = [50, 48, 47, 45, 43, 41]
            for k in range(per_bar * 4):
                if k < (per_bar - 2) * 4:
                    if k % 2 == 0:
                        hit(t0 + k * beat / 4, 42, 80)
                    continue
                hit(t0 + k * beat / 4, toms[(k // 2) % len(toms)], 95)
            continue
        if b == start_bar or b % fill_every == 0:
            hit(t0, 49, 105)
        for k in range(per_bar):
            t = t0 + k * beat
            down = k % 2 == 0
            if style == "four":
                hit(t, 36, 110)
            elif style == "half":
                if k == 0:
                    hit(t, 36, 110)
            elif down:
                hit(t, 36, 105)
            if style == "half":
                if k == 2 % per_bar:
                    hit(t, 38, 105)
            elif not down or (per_bar == 3 and k > 0):
                hit(t, 38, 100)
            if style == "ride":
                hit(t, 51, 85)
                if not down:
                    hit(t, 44, 70)
            elif style == "sixteen":
                for j in range(4):
                    hit(t + j * beat / 4, 42, 85 if j == 0 else 60)
            else:
                hit(t, 42, 90)
                hit(t + beat / 2, 46 if rng.random() < 0.1 else 42, 65)
            if rng.random() < 0.15:  # a ghost kick on the off-beat
                hit(t + beat / 2, 36, 80)
    return ev


def _midi_events(path: str, rng: np.random.Generator, font: str, max_seconds: float = 150.0):
    """Split a GM file by channel: 10 -> drums, GM basses -> bass, the highest-pitched busy
    melodic channel -> vocals (re-voiced with a voice patch), every other channel -> other."""
    info = {"source": f"planetblupi-music-midi:{Path(path).name}"}
    timed, t = [], 0.0
    for msg in mido.MidiFile(path):  # iteration merges tracks and applies tempo: time in seconds
        t += msg.time
        if t > max_seconds:
            break
        if not msg.is_meta and hasattr(msg, "channel"):
            timed.append((t, msg))
    program = {}
    pitches: dict[int, list[int]] = {}
    for _, msg in timed:
        if msg.type == "program_change":
            program.setdefault(msg.channel, msg.program)
        elif msg.type == "note_on" and msg.velocity > 0 and msg.channel != 9:
            pitches.setdefault(msg.channel, []).append(msg.note)
    stem_of = {9: "drums"}
    for ch in pitches:
        stem_of[ch] = "bass" if program.get(ch, 0) in BASS_PROGRAMS else "other"
    melodic = [c for c in pitches if stem_of[c] == "other" and len(pitches[c]) >= 50]
    if not melodic:
        return None, {**info, "reason": "no melodic channel"}
    lead = max(melodic, key=lambda c: np.median(pitches[c]))
    stem_of[lead] = "vocals"
    voice = int(rng.choice(VOICE_PROGRAMS))
    events: dict[str, list] = {s: [] for s in STEMS}
    for t, msg in timed:
        stem = stem_of.get(msg.channel)
        if stem is None:
            continue
        if msg.type == "program_change" and msg.channel == lead:
            msg = msg.copy(program=voice)
        events[stem].append((t, msg))
    events["vocals"].insert(0, (0.0, mido.Message("program_change", channel=lead, program=voice)))
    info.update(
        lead_channel=lead, voice_program=voice, programs={str(k): v for k, v in program.items()}
    )
    return events, info


# ---- rendering


def _render(events: list, font: str) -> np.ndarray:
    """Render one stem's events with fluidsynth: (2, frames) float32 at RATE."""
    if font in AVL_KITS:  # the kit is melodic preset 0-0: play channel 10 on channel 1
        events = [
            (t, m.copy(channel=0, program=0) if m.type == "program_change" else m.copy(channel=0))
            for t, m in events
            if getattr(m, "channel", None) == 9
            and not (m.type == "control_change" and m.control in (0, 32))  # no bank selects
        ]
    mid = mido.MidiFile(ticks_per_beat=960)  # tempo 120 bpm: 1920 ticks per second
    track = mido.MidiTrack()
    mid.tracks.append(track)
    end = max((t for t, _ in events), default=0.0) + 0.5
    channels = {msg.channel for _, msg in events}
    for ch in channels:  # sustain pedal off, all notes off, then silence: the render must end
        events = events + [
            (end, mido.Message("control_change", channel=ch, control=c)) for c in (64, 123)
        ]
        events.append((end + 2.0, mido.Message("control_change", channel=ch, control=120)))
    last = 0
    for t, msg in sorted(events, key=lambda e: (e[0], e[1].type == "note_on")):
        tick = round(t * 1920)
        track.append(msg.copy(time=tick - last))
        last = tick
    with tempfile.TemporaryDirectory() as tmp:
        mid_path, wav_path = Path(tmp) / "stem.mid", Path(tmp) / "stem.wav"
        mid.save(mid_path)
        cmd = [
            "fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(RATE), "-O", "float", "-T", "wav",
            "-o", "synth.dynamic-sample-loading=1",  # only the samples played: sf3 in 1 s, not 6
            "-F", str(wav_path), str(SOUNDFONTS[font]), str(mid_path),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        audio, rate = sf.read(wav_path, dtype="float32", always_2d=True)
    assert rate == RATE
    return np.ascontiguousarray(audio.T)


def _level(stems: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Same length for every stem, each at its typical level (±3 dB), mixture peak below 1."""
    n = max(x.shape[1] for x in stems.values())
    out = {}
    for stem, x in stems.items():
        x = np.pad(x, ((0, 0), (0, n - x.shape[1])))
        frames = x[:, : n // 2048 * 2048].reshape(2, -1, 2048)
        energy = (frames**2).mean(axis=(0, 2))
        active = energy[energy > energy.max() * 1e-3] if energy.max() > 0 else energy
        rms = float(np.sqrt(active.mean())) if active.size and active.mean() > 0 else 0.0
        gain = 10 ** ((STEM_DB[stem] + rng.uniform(-3, 3)) / 20) / rms if rms > 0 else 0.0
        out[stem] = (x * gain).astype(np.float32)
    peak = np.abs(sum(out.values())).max()
    if peak > 0.95:
        out = {k: v * (0.95 / peak) for k, v in out.items()}
    return out


def _complete(folder: Path) -> bool:
    return all((folder / f"{s}.wav").is_file() for s in ("mixture", *STEMS))


def _write(folder: Path, stems: dict[str, np.ndarray]) -> None:
    """Write the stems, then the mixture last: a folder with mixture.wav is complete."""
    (folder / "mixture.wav").unlink(missing_ok=True)
    write_track(folder, {**stems, "mixture": sum(stems.values())}, RATE)


def _hydrogen_job(song: Path, root: str, seed: int) -> dict:
    """Render a Hydrogen demo song (real sampled kits) as a drums-only training track."""
    name = f"hydrogen-{song.stem}"
    folder = Path(root) / name
    info = {"name": name, "split": "train", "source": f"hydrogen-data:{song.name}"}
    if _complete(folder):
        return {**info, "seconds": sf.info(str(folder / "mixture.wav")).duration}
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "drums.wav"
        cmd = ["h2cli", "-s", str(song), "-o", str(wav), "-r", str(RATE)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == RATE
    drums = np.ascontiguousarray(audio.T)
    silent = np.zeros_like(drums)
    stems = _level({"drums": drums}, rng)
    stems.update(vocals=silent, bass=silent, other=silent)
    _write(folder, stems)
    return {**info, "seconds": drums.shape[1] / RATE}


def _real(root: Path) -> None:
    """The real recordings used only for evaluation."""
    from separator.datasets import example_folder

    with tempfile.TemporaryDirectory() as tmp:
        example_folder(tmp)
        src = Path(tmp) / "test" / "Example - Falcon 69"
        dest = root / "stempeg" / src.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.wav"):
            shutil.copy(f, dest / f.name)
    for song in sorted(FOF.glob("*/*/guitar.ogg")):
        guitar, r1 = sf.read(song, dtype="float32", always_2d=True)
        rest, r2 = sf.read(song.parent / "song.ogg", dtype="float32", always_2d=True)
        assert r1 == r2 == RATE
        n = min(len(guitar), len(rest))
        stems = {"guitar": guitar[:n].T, "rest": rest[:n].T}
        folder = root / "fof" / f"{song.parent.parent.name} - {song.parent.name}"
        write_track(folder, {"mixture": stems["guitar"] + stems["rest"], **stems}, RATE)


if __name__ == "__main__":
    raise SystemExit(main())
