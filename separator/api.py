"""Python API: `Separator` separates tensors and files with the streaming engine.

    sep = Separator.from_pretrained("model.yaml", device="auto")
    paths = sep.separate_file("song.flac", stems="vocals,instrumental", output_dir="out")
    stems = sep.separate_tensor(wav, sample_rate=44100)  # {"vocals": (C, T), ...}

Files are read in blocks, resampled to the model's rate and back on the fly, separated, and the
finished samples of each stem written as soon as the engine releases them: memory does not grow
with track length. Outputs keep the input's sample rate, channel count and exact length.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from separator.audio import Resampler, StemWriter, open_audio
from separator.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    StreamingEngine,
    TTAModel,
    check_model,
)
from separator.errors import SeparatorError
from separator.stems import StemPlan, available_stems, check_stem_names, resolve_stems

Progress = Callable[[int, int | None], None]  # (input frames done, total frames or None)
DEFAULT_FILENAME = "{track}/{stem}.{ext}"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; a named device that is absent is an error."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeparatorError("--device cuda: no CUDA device available (try --device cpu)")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise SeparatorError(
            "--device mps: MPS is not available on this machine (try --device cpu)"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise SeparatorError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None


def pop_samples(queue: deque[np.ndarray], n: int, channels: int) -> np.ndarray:
    """Remove and return the first `n` samples of a queue of (m, C) blocks."""
    parts, need = [], n
    while need > 0:
        head = queue[0]
        take = min(need, len(head))
        parts.append(head[:take])
        if take == len(head):
            queue.popleft()
        else:
            queue[0] = head[take:]
        need -= take
    return np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)


class _PipelineBase:
    """What every pipeline shares: a delayed copy of the mixture for the residual stems, the
    assembly of the requested outputs, and the loop over input blocks. Subclasses give `push`,
    `flush` and keep `n_in` / `n_out` (input samples taken / output samples released)."""

    def __init__(self, plans: list[StemPlan], in_channels: int) -> None:
        self.plans, self.in_channels = plans, in_channels
        self.needed = sorted({i for p in plans for i in p.uses})  # model stems the plans use
        self.mix: deque[np.ndarray] = deque()  # input blocks not yet matched by output
        self.n_in = 0
        self.n_out = 0

    def _take_input(self, block: np.ndarray) -> None:
        self.mix.append(block)
        self.n_in += len(block)

    def _assemble(self, stem: Callable[[int], np.ndarray], m: int) -> dict[str, np.ndarray]:
        """{plan name: (m, Cin)} from `stem(model stem index)`, residuals from the mixture."""
        mix = pop_samples(self.mix, m, self.in_channels)
        out = {}
        for plan in self.plans:
            if plan.index is not None:
                out[plan.name] = np.ascontiguousarray(stem(plan.index))
            else:
                rest = sum(stem(i) for i in plan.minus)
                out[plan.name] = (mix - rest).astype(np.float32)
        return out

    def push(self, block: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def flush(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run(
        self,
        blocks: Iterator[np.ndarray],
        sink: Callable[[dict[str, np.ndarray]], None],
        total: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Drive the pipeline over all `blocks`, handing each output dict to `sink`."""
        for block in blocks:
            sink(self.push(block))
            if progress is not None:
                progress(self.n_out, total)
        sink(self.flush())
        if progress is not None:
            progress(self.n_out, self.n_out)


class _Pipeline(_PipelineBase):
    """Block pipeline from input-rate mixture blocks to input-rate output stems.

    mixture (n, Cin) ─▶ model channels ─▶ resample to model rate ─▶ engine(s) ─▶ needed stems in
    the input's channel layout ─▶ resample back ─▶ residuals from a delayed copy of the mixture.
    A mono model on stereo input runs one engine per channel, so stereo stays stereo.
    """

    def __init__(
        self, sep: Separator, in_rate: int, in_channels: int, plans: list[StemPlan], where: str
    ) -> None:
        model_ch = sep.model.audio_channels
        if in_channels not in (1, 2):
            raise SeparatorError(
                f"{where}: {in_channels} channels; separate takes mono or stereo "
                "audio (downmix first, e.g. ffmpeg -i in -ac 2 out.wav)"
            )
        if model_ch not in (1, 2):
            raise SeparatorError(f"model has {model_ch} audio channels; only 1 or 2 are supported")
        super().__init__(plans, in_channels)
        self.split = model_ch == 1 and in_channels == 2  # one engine per input channel
        self.engines = [sep.new_engine() for _ in range(2 if self.split else 1)]
        self.duplicate = model_ch == 2 and in_channels == 1
        rate = sep.model.sample_rate
        self.down = Resampler(in_rate, rate, 1 if self.split else model_ch)
        self.downs = [self.down] + ([Resampler(in_rate, rate, 1)] if self.split else [])
        self.up = Resampler(rate, in_rate, len(self.needed) * in_channels)

    def push(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """(n, Cin) float32 mixture -> {stem: (m, Cin)} finished output (m may be 0)."""
        self._take_input(block)
        return self._step(block, last=False)

    def flush(self) -> dict[str, np.ndarray]:
        """End of input: the remaining output, padded or trimmed to the input's exact length."""
        return self._step(np.zeros((0, self.in_channels), np.float32), last=True)

    def _step(self, block: np.ndarray, *, last: bool) -> dict[str, np.ndarray]:
        if self.split:
            parts = [
                self._run_engine(e, r, block[:, c : c + 1], last)
                for c, (e, r) in enumerate(zip(self.engines, self.downs))
            ]
            y = torch.cat(parts, dim=1)  # (K, 2, m): one channel from each engine
        else:
            x = np.repeat(block, 2, axis=1) if self.duplicate else block
            y = self._run_engine(self.engines[0], self.down, x, last)
            if self.duplicate:
                y = y.mean(dim=1, keepdim=True)  # mono in, mono out
        k, c, m = y.shape
        flat = y.permute(2, 0, 1).reshape(m, k * c).numpy()
        out = self.up(flat, last=last)
        if last:
            missing = self.n_in - self.n_out - len(out)
            if missing > 0:  # resampler rounding: at most a sample or two short
                out = np.concatenate([out, np.zeros((missing, out.shape[1]), np.float32)])
        out = out[: self.n_in - self.n_out]
        self.n_out += len(out)
        stems = out.reshape(len(out), k, c)  # (m, K needed stems, Cin)
        return self._assemble(lambda i: stems[:, self.needed.index(i)], len(stems))

    def _run_engine(
        self, engine: StreamingEngine, down: Resampler, x: np.ndarray, last: bool
    ) -> Tensor:
        """(n, C) input-rate samples -> (K needed stems, C, m) model-rate output, finished."""
        xm = down(x, last=last)
        y = engine.push(torch.from_numpy(np.ascontiguousarray(xm.T)))
        if last:
            y = torch.cat([y, engine.flush()], dim=-1)
        return y[self.needed]


class SeparatorBase:
    """What `Separator` and `Ensemble` share: separating tensors and files through a pipeline.

    Subclasses give `stems` and `_pipeline(in_rate, in_channels, plans, where)`.
    """

    @property
    def stems(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def available_stems(self) -> list[str]:
        """Every name `stems=` accepts: model stems, `instrumental`, `no_<stem>`."""
        return available_stems(self.stems)

    def _pipeline(self, in_rate: int, in_channels: int, plans: list[StemPlan], where: str):
        raise NotImplementedError

    def separate_tensor(
        self, wav: Tensor, sample_rate: int, stems: str | Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Separate a (channels, time) or (time,) waveform at `sample_rate`.

        Returns {stem: (channels, time)} float32 CPU tensors at `sample_rate`, same shape as `wav`
        ((time,) in, (time,) out). Same pipeline as `separate_file`, with one block.
        """
        squeeze = wav.dim() == 1
        x = wav.detach().float().cpu()
        x = x[None] if squeeze else x
        if x.dim() != 2 or x.shape[-1] == 0:
            raise SeparatorError(
                f"expected a non-empty (channels, time) tensor, got {tuple(wav.shape)}"
            )
        if not torch.isfinite(x).all():
            raise SeparatorError("input tensor contains NaN or infinite samples")
        plans = resolve_stems(self.stems, stems)
        pipe = self._pipeline(int(sample_rate), x.shape[0], plans, where="tensor")
        parts: dict[str, list[np.ndarray]] = {p.name: [] for p in plans}
        block = np.ascontiguousarray(x.numpy().T)
        pipe.run(iter([block]), lambda out: [parts[k].append(v) for k, v in out.items()])
        result = {k: torch.from_numpy(np.concatenate(v).T.copy()) for k, v in parts.items()}
        return {k: v[0] if squeeze else v for k, v in result.items()}

    def separate_file(
        self,
        path: str | os.PathLike,
        stems: str | Sequence[str] | None = None,
        *,
        output_dir: str | os.PathLike = "separated",
        filename: str = DEFAULT_FILENAME,
        fmt: str = "wav",
        bits: int = 24,
        clip: str = "rescale",
        force: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        """Separate one audio file, streaming; returns {stem: written path}.

        Output files keep the input's sample rate, channels and length. Each is written to a
        temporary file and renamed at the end, so a failure or Ctrl-C leaves none behind; an
        existing output is an error unless `force`.
        """
        path = Path(path)
        plans = resolve_stems(self.stems, stems)
        targets = output_paths(path, [p.name for p in plans], Path(output_dir), filename, fmt)
        if not force:
            for target in targets.values():
                if target.exists():
                    raise SeparatorError(f"{target}: already exists (pass --force to overwrite)")
        source = open_audio(path)
        pipe = self._pipeline(source.sample_rate, source.channels, plans, where=str(path))
        writers: dict[str, StemWriter] = {}
        try:
            for name, target in targets.items():
                writers[name] = StemWriter(
                    target, source.sample_rate, source.channels, fmt=fmt, bits=bits, clip=clip
                )

            def sink(out):
                return [writers[k].write(v) for k, v in out.items()]

            pipe.run(source.blocks(), sink, total=source.frames, progress=progress)
        except BaseException:
            for writer in reversed(writers.values()):  # the first one made the folders
                writer.abort()
            raise
        return {name: writer.commit() for name, writer in writers.items()}


class Separator(SeparatorBase):
    """Separates audio with a model that follows the engine's protocol.

    `model`: any `nn.Module` with `forward((B, C, T)) -> (B, S, C, T)`, `sample_rate`, `stems`,
    `audio_channels` and `chunk_size`. `overlap`: model evaluations per sample (>= 1).
    `precision`: "fp32", or "bf16"/"fp16" autocast (fp16 needs a GPU). `tta`: average the
    channel-swapped and polarity-inverted passes. `compile`: wrap the model in `torch.compile`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "auto",
        overlap: float = DEFAULT_OVERLAP,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_size: int | None = None,
        precision: str = "fp32",
        tta: bool = False,
        compile: bool = False,
    ) -> None:
        check_model(model)
        check_stem_names(model.stems)
        if precision not in PRECISIONS:
            raise SeparatorError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise SeparatorError("fp16 autocast needs a GPU; use bf16 or fp32 on the CPU")
        model = model.to(self.device).eval()
        if tta:
            model = TTAModel(model)
        self.model = model
        self._forward: nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
        self.overlap, self.batch_size, self.chunk_size = overlap, batch_size, chunk_size
        self.autocast_dtype = PRECISIONS[precision]
        self.new_engine()  # validate overlap / batch size / chunk size now, not mid-file

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, config: str | os.PathLike | None = None, **kwargs
    ) -> Separator:
        """Load a model (see `load_pretrained`) and wrap it; `kwargs` go to `Separator`."""
        return cls(load_pretrained(name_or_path, config=config), **kwargs)

    @property
    def stems(self) -> tuple[str, ...]:
        """The model's own stems, in output order."""
        return tuple(self.model.stems)

    def new_engine(self) -> StreamingEngine:
        """A fresh streaming engine with this separator's settings (one per stream)."""
        engine = StreamingEngine(
            self._forward,
            overlap=self.overlap,
            batch_size=self.batch_size,
            chunk_size=self.chunk_size,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
        )
        return engine

    def _pipeline(self, in_rate: int, in_channels: int, plans: list[StemPlan], where: str):
        return _Pipeline(self, in_rate, in_channels, plans, where)


CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".safetensors")
YAML_SUFFIXES = (".yaml", ".yml")


def load_pretrained(
    name_or_path: str | os.PathLike,
    config: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
) -> nn.Module:
    """Build a model from a name, a model card / MSST YAML, a checkpoint plus `config`, or a folder.

    A name is a card shipped in `models/` or `pretrained/` (`separator models list`); its weights
    are downloaded on first use (sha256-checked; `offline` or SEPARATOR_OFFLINE=1 uses the cache
    only). A `.yaml` path is a config or model card; a checkpoint path (.ckpt/.pth/.pt/
    .safetensors) needs `config`; a folder must hold exactly one card.
    """
    target = Path(name_or_path)
    if target.suffix in YAML_SUFFIXES or target.suffix in CHECKPOINT_SUFFIXES or target.exists():
        if not target.exists():
            raise SeparatorError(f"{target}: no such model file")
    else:
        return _load_named(str(name_or_path), config, offline)
    if target.is_dir():
        cards = sorted(p for p in target.iterdir() if p.suffix in YAML_SUFFIXES)
        if len(cards) != 1:
            raise SeparatorError(
                f"{target}: expected one model card (.yaml) in the folder, found {len(cards)}"
            )
        target = cards[0]
    try:
        from separator.checkpoints import load_model
    except ImportError:
        raise SeparatorError("model loading (separator.checkpoints) is not installed") from None
    if target.suffix in YAML_SUFFIXES:
        if config is not None:
            raise SeparatorError(f"{target}: a .yaml model is its own config; drop --config")
        return load_model(target)
    if config is None:
        raise SeparatorError(f"{target}: a checkpoint needs its YAML config; pass --config")
    if not Path(config).exists():
        raise SeparatorError(f"{config}: no such config file")
    return load_model(config, target)


def _load_named(name: str, config, offline: bool | None) -> nn.Module:
    from separator.checkpoints import load_model
    from separator.registry import EnsembleCard, all_cards, weights_file

    cards = all_cards()
    card = cards.get(name)
    if card is None:
        raise SeparatorError(
            f"unknown model {name!r}: not a file and not a known model name (see `separator "
            "models list`); pass a name, a model card or MSST config (.yaml), a checkpoint "
            "(.ckpt/.pth/.pt/.safetensors) with --config, or a folder holding one card"
        )
    if isinstance(card, EnsembleCard):
        raise SeparatorError(f"{name} is an ensemble: load it with load_separator({name!r})")
    if config is not None:
        raise SeparatorError(f"{name}: a named model brings its own config; drop --config")
    return load_model(card, weights_file(card, offline=offline))


def load_separator(
    model: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    *,
    method: str | None = None,
    weights: Sequence[float] | None = None,
    offline: bool | None = None,
    **kwargs,
) -> SeparatorBase:
    """A `Separator`, or an `Ensemble` for "a,b[,c]" or an ensemble card name.

    No model and no config: the embedded default model. `method`/`weights` choose how an ensemble
    combines its members (avg by default; an ensemble card's own choice otherwise); `kwargs` go to
    every `Separator`.
    """
    from separator.registry import DEFAULT_MODEL, EnsembleCard, all_cards

    if model is None and config is None:
        model = DEFAULT_MODEL
    elif model is None:  # a config alone names the model (a card, or an MSST YAML)
        model, config = config, None
    spec = str(model)
    names = [m.strip() for m in spec.split(",") if m.strip()] if "," in spec else None
    stem_models = None
    card = None if names or Path(spec).exists() else all_cards().get(spec)
    if isinstance(card, EnsembleCard):
        names = list(card.models)
        method = method or card.method
        weights = weights if weights is not None else card.weights
        stem_models = {s: [names.index(m) for m in ms] for s, ms in card.stem_models.items()}
    if names is None:
        if method is not None or weights is not None:
            raise SeparatorError("--ensemble and --weights need several models: --model a,b")
        return Separator(load_pretrained(spec, config=config, offline=offline), **kwargs)
    if config is not None:
        raise SeparatorError("--config applies to one checkpoint, not to an ensemble")
    from separator.ensemble import Ensemble

    members = [Separator(load_pretrained(n, offline=offline), **kwargs) for n in names]
    return Ensemble(
        members, method=method or "avg", weights=weights, stem_models=stem_models, names=names
    )


def track_name(path: Path) -> str:
    """ "song.wav" -> "song"; "song.stem.mp4" -> "song"."""
    name = path.stem
    return name.removesuffix(".stem")


def output_paths(
    path: Path, stems: Sequence[str], output_dir: Path, filename: str, fmt: str
) -> dict[str, Path]:
    """Fill the `--filename` template for every stem; each result must stay in `output_dir`."""
    root = output_dir.resolve()
    paths = {}
    for stem in stems:
        try:
            rel = filename.format(track=track_name(path), stem=stem, ext=fmt)
        except (KeyError, IndexError, ValueError) as e:
            raise SeparatorError(
                f"--filename {filename!r}: bad template ({e}); use {{track}}, {{stem}}, {{ext}}"
            ) from None
        target = (root / rel).resolve()
        if root not in target.parents:
            raise SeparatorError(
                f"--filename {filename!r}: stem {stem!r} would be written outside {output_dir}"
            )
        paths[stem] = target
    if len(set(paths.values())) < len(paths):
        raise SeparatorError(
            f"--filename {filename!r}: stems would overwrite each other; add {{stem}}"
        )
    return paths
