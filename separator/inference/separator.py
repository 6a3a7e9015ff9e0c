"""The Separator API: `Separator` separates tensors and files with the streaming engine.

    sep = Separator(load_model("model.yaml"), device="auto")
    paths = sep.separate_file("song.flac", stems="vocals,instrumental", output_dir="out")
    stems = sep.separate_tensor(wav, sample_rate=44100)  # {"vocals": (C, T), ...}

Files are read in blocks, resampled to the model's rate and back on the fly, separated, and the
finished samples of each stem written as soon as the engine releases them: memory does not grow
with track length. Outputs keep the input's sample rate, channel count and exact length.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from separator.errors import SeparatorError
from separator.inference.apply_model import apply_engine
from separator.inference.audio import open_audio
from separator.inference.cancel import Cancel
from separator.inference.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    StreamingEngine,
    TTAModel,
    check_model,
)
from separator.inference.inputs import as_waveform, check_sample_rate
from separator.inference.mixture_norm import MixtureStats, NormalizedEngine, mixture_stats
from separator.inference.outputs import TrackOutputs
from separator.inference.pipeline import ModelPipeline, Progress
from separator.inference.precision import PRECISIONS, resolve_precision
from separator.inference.stems import StemPlan, available_stems, check_stem_names, resolve_stems
from separator.inference.writers import DEFAULT_BITS, DEFAULT_CLIP, DEFAULT_FORMAT, OutputSpec
from separator.zoo.pipeline import PipelineSpec

DEFAULT_FILENAME = "{track}/{stem}.{ext}"
Rewind = Callable[[], Iterator[np.ndarray]]  # the input's blocks, read again from the start


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; a named device that is absent is an error."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeparatorError("`device` 'cuda': no CUDA device available (try 'cpu')")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise SeparatorError("`device` 'mps': MPS is not available on this machine (try 'cpu')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SeparatorError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None


class SeparatorBase:
    """What `Separator` and `Ensemble` share: separating tensors and files through a pipeline.

    Subclasses give `stems` and `_pipeline(in_rate, in_channels, plans, where)`.
    """

    @property
    def stems(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def residuals(self) -> bool:
        """Whether the residual stems (`instrumental`, `no_<stem>`) exist for this model."""
        return True

    @property
    def available_stems(self) -> list[str]:
        """Every name `stems=` accepts: model stems, `instrumental`, `no_<stem>`."""
        return available_stems(self.stems, self.residuals)

    def _pipeline(
        self,
        in_rate: int,
        in_channels: int,
        plans: list[StemPlan],
        where: str,
        rewind: Rewind | None = None,
    ):
        """A pipeline for one input; `rewind()` gives its blocks afresh (for statistics)."""
        raise NotImplementedError

    def _plans(self, stems: str | Sequence[str] | None, residual: str = "minus") -> list[StemPlan]:
        """The outputs to make for `stems` (None: the default ones, every model stem);
        `residual`: how `no_<stem>`/`instrumental` are made (see `resolve_stems`)."""
        return resolve_stems(self.stems, stems, residual=residual, residuals=self.residuals)

    def separate_tensor(
        self,
        wav: Tensor | np.ndarray,
        sample_rate: int,
        stems: str | Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """Separate a (channels, time) or (time,) waveform at `sample_rate` (whole Hz).

        `wav`: a torch tensor or numpy array; floats are taken as they are, integer PCM (int16,
        int32, int8, uint8) is scaled to [-1, 1) as soundfile reads it (int16 / 32768, ...).
        Returns {stem: (channels, time)} float32 CPU tensors at `sample_rate`, same shape as `wav`
        ((time,) in, (time,) out). Same pipeline as `separate_file`, with one block.
        """
        x = as_waveform(wav)
        sample_rate = check_sample_rate(sample_rate)
        squeeze = x.dim() == 1
        x = x[None] if squeeze else x
        if x.dim() != 2 or x.shape[-1] == 0:
            raise SeparatorError(
                f"expected a non-empty (channels, time) tensor, got {tuple(wav.shape)}"
            )
        plans = self._plans(stems)
        block = np.ascontiguousarray(x.numpy().T)
        rewind = lambda: iter([block])  # noqa: E731
        pipe = self._pipeline(int(sample_rate), x.shape[0], plans, where="tensor", rewind=rewind)
        parts: dict[str, list[np.ndarray]] = {p.name: [] for p in plans}
        pipe.run(iter([block]), lambda out: [parts[k].append(v) for k, v in out.items()])
        result = {k: torch.from_numpy(np.concatenate(v).T.copy()) for k, v in parts.items()}
        return {k: v[0] if squeeze else v for k, v in result.items()}

    # long function: the signature is the list of output options, each documented below
    def separate_file(
        self,
        path: str | os.PathLike,
        stems: str | Sequence[str] | None = None,
        *,
        output_dir: str | os.PathLike = "separated",
        filename: str = DEFAULT_FILENAME,
        fmt: str = DEFAULT_FORMAT,
        bits: int = DEFAULT_BITS,
        clip: str = DEFAULT_CLIP,
        force: bool = False,
        progress: Progress | None = None,
        bitrate: int | None = None,
        sample_rate: int | None = None,
        normalize: float | None = None,
        clip_level: float = 1.0,
        preset: int | None = None,
        residual: str = "minus",
        names: Mapping[str, str] | None = None,
        cancel: Cancel | None = None,
    ) -> dict[str, Path]:
        """Separate one audio file, streaming; returns {stem: written path}.

        Outputs keep the input's channels and length, and its rate unless `sample_rate` is
        given. `fmt`: wav, flac, mp3, ogg, opus or m4a (`bits` for the lossless ones, `bitrate`
        in kbps for the others; `preset`: LAME quality 2-7 for mp3). `clip`/`clip_level`: see
        `StemWriter`; `normalize`: one gain for all stems so that the loudest peaks there.
        `residual`: `no_<stem>`/`instrumental` as the mixture "minus" the stem, or the "add"ed
        other stems. `names`: template values besides {track}, {trackext}, {stem}, {ext} (e.g.
        {model}). Stems are written to temporaries and renamed together at the end, so a
        failure or Ctrl-C leaves none of them; an existing output is an error unless `force`.
        `cancel`: a `Cancel` another thread may trigger.
        """
        path = Path(path)
        spec = OutputSpec(fmt, bits, clip, clip_level, bitrate, sample_rate, preset)
        plans = self._plans(stems, residual=residual)
        stem_names = [p.name for p in plans]
        targets = output_paths(path, stem_names, Path(output_dir), filename, fmt, names)
        source = open_audio(path)
        rewind = lambda: open_audio(path).blocks()  # noqa: E731  (a first pass, if one is needed)
        pipe = self._pipeline(
            source.sample_rate, source.channels, plans, where=str(path), rewind=rewind
        )
        with TrackOutputs(
            targets, spec, source.sample_rate, source.channels, force=force,
            normalize=normalize, cancel=cancel,
        ) as outputs:  # fmt: skip
            pipe.run(source.blocks(), outputs.write, total=source.frames, progress=progress)
            return outputs.commit()


class Separator(SeparatorBase):
    """Separates audio with a model that follows the engine's protocol.

    `model`: any `nn.Module` with `forward((B, C, T)) -> (B, S, C, T)`, `sample_rate`, `stems`,
    `audio_channels` and `chunk_size`. `overlap`: model evaluations per sample (>= 1).
    `precision`: "auto" (bf16 where the hardware runs it natively and it is faster for this
    model, else fp32; see `separator.inference.precision`), "fp32", or "bf16"/"fp16" autocast
    (fp16 needs a GPU); `self.precision` is the one that runs. `tta`: average the
    channel-swapped and polarity-inverted passes. `compile`: wrap the model in `torch.compile`
    (GPUs only: on the CPU it warns that it does not help and runs eagerly).

    A model whose card declares demucs's pipeline (`model.pipeline`, `zoo.pipeline`) runs in the
    apply_model engine (`inference.apply_model`), with mixture normalisation if the card says so:
    there `overlap` may also be apply_model's fraction (< 1; the card's 0.25 by default),
    `shifts` overrides the card's, `segment` (seconds) the model's, and `seed` draws the shift
    offsets. For other models `segment` is a chunk length in seconds.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "auto",
        overlap: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_size: int | None = None,
        precision: str = "auto",
        tta: bool = False,
        compile: bool = False,
        shifts: int | None = None,
        segment: float | None = None,
        seed: int = 0,
    ) -> None:
        check_model(model)
        self.pipeline = getattr(model, "pipeline", None) or PipelineSpec()
        if self.pipeline.apply_model and (tta or compile):
            raise SeparatorError("`tta` and `compile` do not apply to the apply_model pipeline")
        self.shifts, self.segment, self.seed = shifts, segment, seed
        check_stem_names(model.stems)
        self.device = resolve_device(device)
        model = model.to(self.device).eval()
        self._residuals = bool(getattr(model, "residuals", True))
        if precision == "auto" and self.pipeline.apply_model:
            precision = "fp32"  # demucs's pipeline promises demucs's output: no bf16 guess
        self.precision = resolve_precision(precision, model, self.device)
        if tta:
            model = TTAModel(model)
        self.model = model
        self._forward: nn.Module = compiled(model, self.device) if compile else model
        self.overlap, self.batch_size, self.chunk_size = overlap, batch_size, chunk_size
        self.autocast_dtype = PRECISIONS[self.precision]
        self.new_engine()  # validate overlap / batch size / chunk size now, not mid-file

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, config: str | os.PathLike | None = None, **kwargs
    ) -> Separator:
        """Load a model (`separator.zoo.load_model`) and wrap it; `kwargs` go to `Separator`."""
        from separator.zoo import load_model

        return cls(load_model(name_or_path, config), **kwargs)

    @property
    def stems(self) -> tuple[str, ...]:
        """The model's own stems, in output order."""
        return tuple(self.model.stems)

    @property
    def residuals(self) -> bool:
        """The model's `residuals` attribute (set by the loader from its family; default True)."""
        return self._residuals

    def new_engine(self, stats: MixtureStats | None = None) -> StreamingEngine:
        """A fresh streaming engine with this separator's settings (one per stream), on the
        mixture normalised with `stats` if given."""
        if self.pipeline.apply_model:
            return apply_model_engine(self, stats)
        if self.shifts:
            raise SeparatorError("`shifts` needs a model with the apply_model pipeline (demucs)")
        chunk = self.chunk_size
        if self.segment is not None:
            chunk = max(1, round(self.segment * self.model.sample_rate))
        engine = StreamingEngine(
            self._forward,
            overlap=self.overlap if self.overlap is not None else DEFAULT_OVERLAP,
            batch_size=self.batch_size,
            chunk_size=chunk,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
        )
        return NormalizedEngine(engine, stats) if stats is not None else engine  # type: ignore[return-value]

    def _pipeline(self, in_rate, in_channels, plans, where, rewind=None):
        stats = None
        if self.pipeline.normalize:  # demucs's mixture statistics: a first pass over the input
            if rewind is None:
                raise SeparatorError(f"{where}: normalising the mixture needs a first pass")
            stats = mixture_stats(rewind(), in_rate, self.model.sample_rate)
        new_engine = lambda: self.new_engine(stats)  # noqa: E731
        return ModelPipeline(self.model, new_engine, in_rate, in_channels, plans, where)


def apply_model_engine(sep: Separator, stats: MixtureStats | None):
    """The apply_model engine of a Separator (see `inference.apply_model.apply_engine`)."""
    engine = apply_engine(
        sep.model, sep.pipeline, overlap=sep.overlap, shifts=sep.shifts, segment=sep.segment,
        chunk_size=sep.chunk_size, seed=sep.seed, batch_size=sep.batch_size, device=sep.device,
        autocast_dtype=sep.autocast_dtype,
    )  # fmt: skip
    return NormalizedEngine(engine, stats) if stats is not None else engine


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """`torch.compile` with static shapes (one graph per chunk shape), on GPUs only.

    On the CPU it does not pay for these models: compiling takes 45 s (warm cache) to 5.5 min
    (cold) and the compiled forward was no faster (benchmarks/README.md, "--compile").
    """
    if device.type == "cpu":
        warnings.warn(
            "torch.compile does not speed these models up on the CPU (minutes of compiling, "
            "no faster afterwards): running without it",
            stacklevel=3,
        )
        return model
    return torch.compile(model, dynamic=False)  # type: ignore[return-value]


def track_name(path: Path) -> str:
    """ "song.wav" -> "song"; "song.stem.mp4" -> "song"."""
    name = path.stem
    return name.removesuffix(".stem")


def output_paths(
    path: Path,
    stems: Sequence[str],
    output_dir: Path,
    filename: str,
    fmt: str,
    names: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Fill the `filename` template for every stem; each result must stay in `output_dir`.

    Template values: {track} (file name without extension), {trackext} (its extension),
    {stem}, {ext} (the output format), {model} ("model" unless `names` says), and `names`.
    """
    root = output_dir.resolve()
    values = {"track": track_name(path), "trackext": path.suffix.lstrip("."), "model": "model"}
    values.update(names or {})
    paths = {}
    for stem in stems:
        try:
            rel = filename.format(**{**values, "stem": stem, "ext": fmt})
        except (KeyError, IndexError, ValueError) as e:
            raise SeparatorError(
                f"`filename` {filename!r}: bad template ({e}); use {{track}}, {{trackext}}, "
                "{stem}, {ext}, {model}"
            ) from None
        target = (root / rel).resolve()
        if root not in target.parents:
            raise SeparatorError(
                f"`filename` {filename!r}: stem {stem!r} would be written outside {output_dir}"
            )
        paths[stem] = target
    if len(set(paths.values())) < len(paths):
        raise SeparatorError(
            f"`filename` {filename!r}: stems would overwrite each other; add {{stem}}"
        )
    return paths
