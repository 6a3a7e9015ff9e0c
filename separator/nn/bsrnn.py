"""Band-split RNN (BSRNN), the core that BandIt (`bandit`) and BandIt v2 (`bandit_v2`) share.

Luo & Yu, "Music Source Separation with Band-split RNN" (arXiv 2209.15174); BandIt: Watcharasupat,
Wu & Lerch, "A Generalized Bandsplit Neural Network for Cinematic Audio Source Separation"
(arXiv 2309.02539). Parameter names follow MSST (ZFTurbo/Music-Source-Separation-Training, commit
ccc011a: `models/bandit/core/model/bsrnn/` and `models/bandit_v2/`), so its checkpoints load with
`strict=True`.

Axis legend: r row (one mono spectrogram: batch × audio channel), n stem, f STFT bin, t frame,
k band, d embedding, h RNN/MLP hidden, w (padded) band feature width, c real/imag.

    spectrum (r, f, t) -> band split: per band LayerNorm + Linear on its bins   -> (t, r, k, d)
      -> 2·n_sqm_modules residual RNNs, alternately across frames and across bands -> (k, r, t, d)
      -> per stem and band LayerNorm + MLP + GLU: a complex mask for the band's bins, weighted
         where bands overlap and summed onto the spectrum                          -> (n, r, t, f)
      -> mask × mixture spectrum                                                  -> (r, n, f, t)

MSST runs the band split and the mask estimators as Python loops over ~64 bands (×3 stems). Here
bands are grouped by padded width (`nn.bands.BandGroups`) and each group is one batched matmul;
the per-band modules keep MSST's names and their weights are stacked on the fly (cached in
inference). Subclasses (the two families) say how a band's features are laid out and which
per-band module classes hold the parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.bands import BandGroups, _pad_halves
from separator.nn.layers import WeightCache
from separator.nn.recurrent import RNN_TYPES, ResidualRNN, run_seqband
from separator.nn.stft import istft, stft

# Index tables are built on the CPU even under `with torch.device("meta")` and move with the module.
_CPU = torch.device("cpu")


# --- band layouts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandLayout:
    """Bands as [start, end) STFT bins, and each band's per-bin weights where bands overlap.

    weights: float64 arrays (a band's filterbank row over the per-bin sum over bands), or None
    for a layout whose bands tile the spectrum without overlap.
    """

    bands: tuple[tuple[int, int], ...]
    n_freq: int
    weights: tuple[np.ndarray, ...] | None = None

    @property
    def widths(self) -> list[int]:
        return [e - s for s, e in self.bands]

    def check(self, *, require_no_gap: bool) -> None:
        """MSST's `check_nonzero_bandwidth` and (optionally) `check_no_gap`, as ConfigErrors."""
        if not self.bands or any(e - s <= 0 for s, e in self.bands):
            raise ConfigError(f"band layout has an empty band: {list(self.bands)[:8]}")
        if require_no_gap:
            # MSST's check lets a one-bin gap through (start - previous end > 1 is the error).
            prev = -1
            for s, e in self.bands:
                if s - prev > 1 or (prev == -1 and s != 0):
                    raise ConfigError(f"band layout leaves a gap before bin {s} (require_no_gap)")
                prev = e


def musical_layout(n_fft: int, fs: float, n_bands: int) -> BandLayout:
    """BandIt's "musical" bands: `n_bands` MIDI-spaced, overlapping bands (MSST
    `musical_filterbank` + `PerceptualBandsplitSpecification`).

    f_min is fs/n_fft whatever is asked; band i spans centre·2^(∓octaves/n_bands) (floor/ceil to
    bins); band 0 reaches down to bin 0 and the last band up to Nyquist; empty bands are dropped.
    """
    import librosa

    n_freq = n_fft // 2 + 1
    nfft = 2 * (n_freq - 1)
    df = fs / nfft
    f_min, f_max = fs / nfft, fs / 2
    mult = np.power(2.0, np.log2(f_max / f_min) / n_bands)
    midi = np.linspace(max(0, librosa.hz_to_midi(f_min)), librosa.hz_to_midi(f_max), n_bands)
    hz = librosa.midi_to_hz(midi)
    low = np.floor(hz / mult / df).astype(int)
    high = np.ceil(hz * mult / df).astype(int)
    cols = np.arange(n_freq)
    fb = ((cols >= low[:, None]) & (cols <= high[:, None])).astype(np.float64)
    fb[0, : low[0]] = 1.0
    fb[-1, high[-1] + 1 :] = 1.0
    normalised = fb / fb.sum(axis=0, keepdims=True)
    bands, weights = [], []
    for row, norm_row in zip(fb, normalised):
        active = np.flatnonzero(row)
        if len(active):
            start, end = int(active[0]), int(active[-1]) + 1
            bands.append((start, end))
            weights.append(norm_row[start:end])
    return BandLayout(tuple(bands), n_freq, tuple(weights))


def vocal_layout(n_fft: int, fs: float) -> BandLayout:
    """BandIt's non-overlapping "vocal" bands, version 7 (MSST `VocalBandsplitSpecification`):
    100 Hz wide below 1 kHz, then 250 Hz to 4 kHz, 500 Hz to 8 kHz, 1 kHz to 16 kHz, 2 kHz to
    20 kHz, and one band above."""

    def index(hz: float) -> int:
        return int(np.round(hz * n_fft / fs))

    n_freq = n_fft // 2 + 1
    edges = [0, index(1000), index(4000), index(8000), index(16000), index(20000)]
    bands: list[tuple[int, int]] = []
    for lo, hi, width in zip(edges[:-1], edges[1:], (100, 250, 500, 1000, 2000)):
        step = index(width)
        if step < 1 and lo < hi:
            raise ConfigError(f"n_fft={n_fft} at fs={fs} is too coarse for {width} Hz bands")
        while lo < hi:
            bands.append((lo, min(int(np.floor(lo + step)), hi)))
            lo = bands[-1][1]
    bands.append((edges[-1], n_freq))
    return BandLayout(tuple(bands), n_freq)


# --- modules -------------------------------------------------------------------------------------
class WindowBuffer(nn.Module):
    """A persistent `window` buffer, as torchaudio's (Inverse)Spectrogram holds one: BandIt
    checkpoints store `stft.window` and `istft.window` as two separate tensors."""

    def __init__(self, window: Tensor) -> None:
        super().__init__()
        self.register_buffer("window", window)


def activation(name: str, kwargs: dict | None) -> nn.Module:
    """MSST's `activation.__dict__[hidden_activation](**hidden_activation_kwargs)`."""
    cls = getattr(nn.modules.activation, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name == "MultiheadAttention":
        raise ConfigError(f"hidden_activation {name!r} is not a torch.nn activation")
    try:
        act = cls(**(kwargs or {}))
    except TypeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"hidden_activation_kwargs for {name}: {first}") from None
    if any(True for _ in act.parameters()):
        raise ConfigError(f"hidden_activation {name} has parameters; only parameter-free ones work")
    return act


# Activations that act along an axis: applied to the batched (k, rows, n·h) hidden they would mix
# stems or pick another axis than MSST's per-band (rows, h) call does.
_AXIS_ACTIVATIONS = ("Softmax", "Softmin", "LogSoftmax", "Softmax2d", "GLU")
_INPLACE_ACTIVATIONS = {nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_, nn.ReLU: torch.relu_}


@dataclass(frozen=True)
class CoreConfig:
    """What the BSRNN core needs, in MSST's names (both families' configs map onto it)."""

    stems: tuple[str, ...]
    emb_dim: int
    rnn_dim: int
    n_sqm_modules: int
    bidirectional: bool
    rnn_type: str
    mlp_dim: int
    hidden_activation: str
    hidden_activation_kwargs: dict | None
    complex_mask: bool

    @classmethod
    def of(cls, config: Any, stems: Sequence[str]) -> CoreConfig:
        """The core's fields read from a family's config (BandIt v1 or v2), which names them
        alike; `stems` are the mask estimators' stems."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "stems"]
        fields = {name: getattr(config, name) for name in names}
        for flag in ("bidirectional", "complex_mask"):
            fields[flag] = bool(fields[flag])
        return cls(stems=tuple(stems), **fields)

    def __post_init__(self) -> None:
        for name in ("emb_dim", "rnn_dim", "mlp_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if int(self.n_sqm_modules) < 0:
            raise ConfigError(f"model.n_sqm_modules must be >= 0, got {self.n_sqm_modules}")
        if self.rnn_type not in RNN_TYPES:
            raise ConfigError(f"model.rnn_type must be one of {sorted(RNN_TYPES)}")
        if self.hidden_activation in _AXIS_ACTIVATIONS:
            raise ConfigError(f"hidden_activation {self.hidden_activation} is not supported")
        if not self.stems or len(set(self.stems)) != len(self.stems):
            raise ConfigError(f"model.stems must list distinct stem names, got {list(self.stems)}")
        activation(self.hidden_activation, self.hidden_activation_kwargs)  # checks the name


class BandSplit(nn.Module):
    """Per band LayerNorm + Linear from its spectrum features to `emb_dim`, batched by groups.

    modules: one per band, holding MSST's parameters (`norm_fc_modules.{k}`); `parts(module)`
    returns its (LayerNorm, Linear). feature_index: each band's feature positions in the spectrum
    flattened as (bin, re/im), in the order the band's Linear reads them.
    forward: (t, r, 2·f) -> (t, r, k, d).
    """

    def __init__(self, modules: Sequence[nn.Module], parts, feature_index: Sequence[Tensor]):
        super().__init__()
        self.norm_fc_modules = nn.ModuleList(modules)
        self._parts = parts
        widths = [len(i) for i in feature_index]
        self.groups = BandGroups(widths)
        # Padded groups normalise over each band's real width only.
        self._padded = [
            any(widths[k] != w for k in bands)
            for bands, w in zip(self.groups.bands, self.groups.width)
        ]
        for g, bands in enumerate(self.groups.bands):
            # Padding gathers the zero column appended to the features at run time (index -1).
            idx = self.groups.group_index(g, feature_index, pad_value=-1)
            self.register_buffer(f"_index{g}", idx, persistent=False)
            real = torch.tensor([widths[k] for k in bands], device=_CPU)[:, None]
            mask = (torch.arange(idx.shape[1], device=_CPU) < real).float()
            self.register_buffer(f"_mask{g}", mask, persistent=False)
            self.register_buffer(f"_count{g}", real.float(), persistent=False)
        self._cache = WeightCache()

    def _weights(self) -> list[tuple[Tensor, Tensor]]:
        """Per group: weight (G, w, d) with the LayerNorm's gain folded in, bias (G, d)."""
        out = []
        for bands, width in zip(self.groups.bands, self.groups.width):
            pairs = [self._parts(self.norm_fc_modules[k]) for k in bands]
            w = [F.pad(lin.weight * ln.weight, (0, width - lin.in_features)) for ln, lin in pairs]
            b = [lin.bias + lin.weight @ ln.bias for ln, lin in pairs]
            out.append((torch.stack(w).transpose(1, 2), torch.stack(b)))
        return out

    def forward(self, x: Tensor) -> Tensor:
        weights = self._cache.get(list(self.parameters()), self._weights)
        eps = self._parts(self.norm_fc_modules[0])[0].eps
        x = F.pad(x, (0, 1))
        outs = []
        for g, (w, b) in enumerate(weights):
            xg = x[..., getattr(self, f"_index{g}")]  # (t, r, G, w)
            if self._padded[g]:
                mask, count = getattr(self, f"_mask{g}"), getattr(self, f"_count{g}")
                xc = (xg - xg.sum(-1, keepdim=True) / count) * mask
                xg = xc * torch.rsqrt(xc.square().sum(-1, keepdim=True) / count + eps)
            else:
                xg = F.layer_norm(xg, (xg.shape[-1],), eps=eps)
            outs.append(torch.einsum("trgw,gwd->trgd", xg, w) + b)
        y = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        if not self.groups.in_order:
            y = y.index_select(2, self.groups.inverse.to(y.device))
        return y


class MaskEstimator(nn.Module):
    """One stem's per-band mask MLPs (`norm_mlp.{k}`) and, where the layout has them, the band
    weights `freq_weights/{k}` (float64 buffers, named with a slash as MSST registers them)."""

    def __init__(self, modules: Sequence[nn.Module], weights: Sequence[np.ndarray] | None):
        super().__init__()
        self.norm_mlp = nn.ModuleList(modules)
        self.n_weights = 0 if weights is None else len(weights)
        for k, fw in enumerate(weights or ()):
            self.register_buffer(f"freq_weights/{k}", torch.tensor(fw, dtype=torch.float64))

    def band_weights(self) -> list[Tensor] | None:
        if not self.n_weights:
            return None
        return [self.get_buffer(f"freq_weights/{k}") for k in range(self.n_weights)]


class BSRNN(nn.Module):
    """The band-split RNN on mono spectrograms. masked_spectra: (r, f, t) -> (r, n, f, t).

    Parameters live where MSST keeps them: `band_split.norm_fc_modules.{k}`, `tf_model.seqband.{i}`
    and `mask_estim.{stem}.norm_mlp.{k}` (+ `freq_weights/{k}`). A subclass (one per family) says
    how a band reads the spectrum (`_feature_index`) and which modules hold the per-band
    parameters (`_band_module`/`_band_parts`, `_mask_module`/`_mask_parts`, `_seqband`).

    layout: the bands; store_weights: register the `freq_weights/{k}` buffers; apply_weights:
    multiply each band's mask by them (MSST v1 registers them even when it does not apply them).
    """

    def __init__(
        self, cfg: CoreConfig, layout: BandLayout, *, store_weights: bool, apply_weights: bool
    ) -> None:
        super().__init__()
        self.cfg, self.layout = cfg, layout
        self.reim = 2 if cfg.complex_mask else 1
        self.apply_weights = apply_weights and layout.weights is not None
        index = [self._feature_index(s, e) for s, e in layout.bands]
        self.band_split = BandSplit(
            [self._band_module(len(i), cfg.emb_dim) for i in index], self._band_parts, index
        )
        self.tf_model = nn.Module()
        self.tf_model.seqband = self._seqband(cfg)
        d_in = cfg.emb_dim
        self.mask_estim = nn.ModuleDict(
            {
                stem: MaskEstimator(
                    [self._mask_module(d_in, self.reim * w) for w in layout.widths],
                    layout.weights if store_weights else None,
                )
                for stem in cfg.stems
            }
        )
        self._act = activation(cfg.hidden_activation, cfg.hidden_activation_kwargs)
        self._init_mask_groups()
        self._cache = WeightCache()

    # --- what a family defines ---------------------------------------------------------------
    def _feature_index(self, start: int, end: int) -> Tensor:
        """Positions of band [start, end)'s features in the (bin, re/im)-flattened spectrum."""
        raise NotImplementedError

    def _band_module(self, width: int, emb_dim: int) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def _band_parts(module: nn.Module) -> tuple[nn.LayerNorm, nn.Linear]:
        raise NotImplementedError

    def _mask_module(self, d_in: int, width: int) -> nn.Module:
        """Per band: LayerNorm(d_in), hidden Linear(d_in, mlp_dim) + activation, output
        Linear(mlp_dim, 2·width) + GLU; width = mask features of the band (c·bins)."""
        raise NotImplementedError

    @staticmethod
    def _mask_parts(module: nn.Module) -> tuple[nn.LayerNorm, nn.Linear, nn.Linear]:
        raise NotImplementedError

    def _seqband(self, cfg: CoreConfig) -> nn.Module:
        raise NotImplementedError

    # --- forward -----------------------------------------------------------------------------
    @property
    def rnns(self) -> list[ResidualRNN]:
        return [m for m in self.tf_model.seqband if isinstance(m, ResidualRNN)]

    def masked_spectra(self, spec: Tensor) -> Tensor:
        """spec: (r, f, t) complex mono spectrograms -> (r, n, f, t) complex64, one per stem."""
        r, f, t = spec.shape
        # (r, f, t, c) -> (t, r, f·c): frames first, as the first RNN runs across them.
        feats = torch.view_as_real(spec).permute(2, 0, 1, 3).reshape(t, r, 2 * f)
        q = run_seqband(self.rnns, self.band_split(feats))  # (k, r, t, d)
        masks = self._masks(q).view(len(self.cfg.stems), r, t, f, self.reim)  # (n, r, t, f, c)
        masks = torch.view_as_complex(masks) if self.reim == 2 else masks[..., 0]
        return spec.unsqueeze(1) * masks.permute(1, 0, 3, 2)

    def _init_mask_groups(self) -> None:
        """Band groups of the mask outputs, and where each padded output slot lands."""
        widths = [self.reim * w for w in self.layout.widths]
        self.out_groups = BandGroups(widths)
        self._out_slices = [
            slice(b[0], b[-1] + 1) if b == tuple(range(b[0], b[-1] + 1)) else None
            for b in self.out_groups.bands
        ]
        slots = []
        for g, (bands, width) in enumerate(zip(self.out_groups.bands, self.out_groups.width)):
            self.register_buffer(f"_out_bands{g}", torch.tensor(bands, device=_CPU), False)
            for k in bands:
                start = self.reim * self.layout.bands[k][0]
                real = torch.arange(start, start + widths[k], device=_CPU)
                slots.append(F.pad(real, (0, width - widths[k])))  # padding adds zeros to bin 0
        self.register_buffer("_slots", torch.cat(slots), persistent=False)

    def _mask_weights(self) -> list[tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]]:
        """Per stem: hidden layer of all bands (k, d_in, h), (k, 1, h) with the LayerNorm's gain
        and bias folded in, and per band group the output layer (G, h, 2·w), (G, 1, 2·w), whose
        value half carries the band weights, so the GLU output is the weighted mask."""
        out = []
        for est in self.mask_estim.values():
            parts = [self._mask_parts(m) for m in est.norm_mlp]
            w1 = torch.stack([(hid.weight * ln.weight).t() for ln, hid, _ in parts])
            b1 = torch.stack([hid.bias + hid.weight @ ln.bias for ln, hid, _ in parts])
            fws = est.band_weights() if self.apply_weights else None
            groups = []
            for bands, width in zip(self.out_groups.bands, self.out_groups.width):
                ws, bs = [], []
                for k in bands:
                    w, b = parts[k][2].weight, parts[k][2].bias
                    if fws is not None:
                        scale = fws[k].to(w.dtype).repeat_interleave(self.reim)
                        scale = torch.cat([scale, torch.ones_like(scale)])  # value | gate
                        w, b = w * scale[:, None], b * scale
                    ws.append(_pad_halves(w, width, 0))
                    bs.append(_pad_halves(b, width, 0))
                groups.append((torch.stack(ws).transpose(1, 2), torch.stack(bs)[:, None]))
            out.append((w1, b1[:, None], groups))
        return out

    def _activate(self, h: Tensor) -> Tensor:
        """The hidden activation, in place where torch has it (a fresh copy of this large tensor
        costs page faults on the CPU)."""
        inplace = _INPLACE_ACTIVATIONS.get(type(self._act))
        return inplace(h) if inplace is not None else self._act(h)

    def _masks(self, q: Tensor) -> Tensor:
        """q: (k, r, t, d) -> masks (n, r·t, f·c) float32, summed over overlapping bands."""
        k, r, t, d = q.shape
        rows = r * t
        q = q.reshape(k, rows, d)
        eps = self._mask_parts(next(iter(self.mask_estim.values())).norm_mlp[0])[0].eps
        q = F.layer_norm(q, (q.shape[-1],), eps=eps)  # the gains are in the weights
        params = list(self.mask_estim.parameters()) + list(self.mask_estim.buffers())
        weights = self._cache.get(params, self._mask_weights)
        full = q.new_zeros(len(weights), rows, self.reim * self.layout.n_freq, dtype=torch.float32)
        for s, (w1, b1, groups) in enumerate(weights):  # a few stems, each all bands at once
            h = self._activate(torch.baddbmm(b1, q, w1))  # (k, rows, h)
            outs = []
            for g, (w2, b2) in enumerate(groups):
                sl = self._out_slices[g]
                hg = h[sl] if sl is not None else h.index_select(0, getattr(self, f"_out_bands{g}"))
                mg = F.glu(torch.baddbmm(b2, hg, w2), dim=-1)  # (G, rows, w)
                outs.append(mg.transpose(0, 1).reshape(rows, -1))
            full[s].index_add_(1, self._slots, torch.cat(outs, dim=1).float())
        return full


@dataclass(frozen=True)
class SpecParams:
    """The STFT as torchaudio's Spectrogram/InverseSpectrogram run it (pad 0, onesided).

    normalized: False, True (torch's frame-length scaling) or "window" (torchaudio's
    `normalized=True`, divide by the window's L2 norm); see `nn.stft`.
    """

    n_fft: int
    win_length: int
    hop_length: int
    center: bool = True
    pad_mode: str = "constant"
    normalized: bool | str = "window"

    def args(self) -> dict:
        return dict(
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            center=self.center,
            normalized=self.normalized,
        )


def separate(
    core: BSRNN, audio: Tensor, spec: SpecParams, stft_window: Tensor, istft_window: Tensor
) -> Tensor:
    """audio (b, s, time) -> (b, n, s, time) at the input's length.

    Audio channels are separated independently: MSST folds them into the batch, (b·s, 1, ...).
    """
    b, s, length = audio.shape
    x = stft(
        audio.reshape(b * s, length), window=stft_window, pad_mode=spec.pad_mode, **spec.args()
    )
    out = core.masked_spectra(x)  # (b·s, n, f, t)
    wav = istft(out, window=istft_window, length=length, **spec.args())  # (b·s, n, time)
    return wav.view(b, s, -1, length).transpose(1, 2).contiguous()


# --- card stem names -----------------------------------------------------------------------------
# Cinematic separation names one set of stems three ways (DnR: speech/music/sfx, BandIt v1:
# speech/music/effects); cards use one: dialog, music, effects.
_STEM_ALIASES = {"speech": "dialog", "dialogue": "dialog", "sfx": "effects", "fx": "effects"}


def card_stems(names: Sequence[str]) -> list[str]:
    """Config stem names as card stem names: lower case, the cinematic aliases above, anything
    but letters, digits, '_', '.', '+' as '_' (spaces and dashes too)."""
    out = []
    for i, name in enumerate(names):
        low = str(name).strip().lower()
        safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.+") else "_" for ch in low)
        safe = _STEM_ALIASES.get(safe, safe).replace("..", "_")
        out.append(safe if safe[:1].isalnum() else f"stem{i}{safe}")
    if len(set(out)) != len(out):
        raise ConfigError(f"stem names {list(names)} are not distinct as file names: {out}")
    return out
