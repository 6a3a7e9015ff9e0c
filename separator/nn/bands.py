"""Band layouts, band split and mask estimation, batched over bands.

A RoFormer cuts the spectrogram into bands of unequal width and gives every band its own
RMSNorm + Linear (band split) and its own MLP (mask estimator). MSST runs these as a Python loop
over ~60 small matmuls.
Here bands are grouped by (padded) width and each group is one batched matmul.
Zero padding leaves the results equal to the per-band layout: padded inputs are zero and padded
outputs are dropped. The parameters keep MSST's per-band names
(`band_split.to_features.{k}.{0,1}`, `mask_estimators.{s}.to_freqs.{k}.0.{i}`), so checkpoints
load unchanged; the batched weights are stacked from them on the fly (and cached in inference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.layers import RMSNorm, WeightCache

# A group may pad its bands to at most this factor of their real total width: a few large matmuls
# with a little padding beat many small ones.
MAX_PADDING = 1.25
# Index tables are built on the CPU even under `with torch.device("meta")` (cards are validated by
# building models on the meta device) and move with the module afterwards.
_CPU = torch.device("cpu")


def stft_bins(n_fft: int) -> int:
    """Number of one-sided STFT bins."""
    return n_fft // 2 + 1


def check_bs_bands(freqs_per_bands: Sequence[int], n_fft: int) -> tuple[int, ...]:
    """Validate a BS-RoFormer band layout: positive widths that sum to the STFT bins."""
    bands = tuple(int(f) for f in freqs_per_bands)
    if len(bands) < 2:
        raise ConfigError(f"model.freqs_per_bands needs at least 2 bands, got {bands}")
    if any(f <= 0 for f in bands):
        raise ConfigError(f"model.freqs_per_bands must be positive, got {bands}")
    if sum(bands) != stft_bins(n_fft):
        raise ConfigError(
            f"sum of model.freqs_per_bands is {sum(bands)} but stft_n_fft={n_fft} gives "
            f"{stft_bins(n_fft)} bins; they must be equal"
        )
    return bands


def mel_band_matrix(
    sample_rate: int, n_fft: int, num_bands: int, edges: str = "forced"
) -> np.ndarray:
    """Boolean (num_bands, bins) matrix: which STFT bins each Mel band covers.

    As in MSST's MelBandRoformer: librosa's Slaney mel filters, binarised (> 0), with bin 0 forced
    into the first band and the last bin into the last band (`edges="forced"`). Bands overlap;
    masks of overlapping bands are averaged per bin.
    `edges="neighbour"`: MSST's MelBandConformer (models/bs_roformer/mel_band_conformer.py,
    ccc011a) sets filter[0, 0] = filter[0, 1]/4 and filter[-1, -1] = filter[-1, -2]/4 instead, so
    an edge bin joins its band only if the bin next to it is in that band.
    """
    import librosa

    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_bands)
    if edges == "forced":
        fb[0, 0] = 1.0
        fb[-1, -1] = 1.0
    elif edges == "neighbour":
        fb[0, 0] = fb[0, 1] * 0.25
        fb[-1, -1] = fb[-1, -2] * 0.25
    else:
        raise ConfigError(f"mel band edges must be 'forced' or 'neighbour', got {edges!r}")
    cover = fb > 0
    if not cover.any(axis=0).all():
        missing = np.flatnonzero(~cover.any(axis=0))
        raise ConfigError(
            f"model.num_bands={num_bands} mel bands leave STFT bins {missing[:8].tolist()} "
            f"uncovered (stft_n_fft={n_fft}, sample_rate={sample_rate})"
        )
    if not cover.any(axis=1).all():
        raise ConfigError(
            f"model.num_bands={num_bands} is too many for stft_n_fft={n_fft}: empty bands"
        )
    return cover


def band_feature_index(bins_per_band: Sequence[Sequence[int]], channels: int) -> list[Tensor]:
    """For each band, its feature positions in a spectrum flattened as (bin, channel, re/im).

    This is MSST's layout: `b s f t c -> b t (f s c)` (frequency major, then channel, then complex).
    """
    out = []
    for bins in bins_per_band:
        b = torch.as_tensor(list(bins), dtype=torch.long, device=_CPU)
        ch = torch.arange(channels, device=_CPU)
        idx = (b[:, None, None] * channels + ch[None, :, None]) * 2
        out.append((idx + torch.arange(2, device=_CPU)[None, None, :]).reshape(-1))
    return out


class BandGroups:
    """Bands grouped by padded width, with the index tables to gather into and out of groups.

    widths: features per band (bins × channels × 2).
    Each group g has `bands[g]` (band indices) and `width[g]` (padded width). A group is
    `contiguous` when its bands are consecutive, all of the group's width, and in order, so its
    input is a plain view of the spectrum features (BS-RoFormer's usual case).
    """

    def __init__(self, widths: Sequence[int], max_padding: float = MAX_PADDING) -> None:
        self.widths = [int(w) for w in widths]
        order = sorted(range(len(widths)), key=lambda k: (self.widths[k], k))
        groups: list[list[int]] = []
        real = 0
        for k in order:
            w = self.widths[k]
            if groups and (len(groups[-1]) + 1) * w <= max_padding * (real + w):
                groups[-1].append(k)
                real += w
            else:
                groups.append([k])
                real = w
        groups.sort(key=lambda g: g[0])
        self.bands = [tuple(g) for g in groups]
        self.width = [max(self.widths[k] for k in g) for g in groups]
        self.contiguous = [
            all(self.widths[k] == self.width[i] for k in g)
            and list(g) == list(range(g[0], g[-1] + 1))
            for i, g in enumerate(groups)
        ]
        # Band order after concatenating groups, and its inverse (identity for BS layouts).
        concat = [k for g in groups for k in g]
        self.in_order = concat == sorted(concat)
        self.inverse = torch.as_tensor(np.argsort(concat), dtype=torch.long, device=_CPU)
        # Slots of the concatenated padded group outputs that hold real features, in band order.
        slot_of_band: dict[int, int] = {}
        offset = 0
        for g, w in zip(groups, self.width):
            for j, k in enumerate(g):
                slot_of_band[k] = offset + j * w
            offset += len(g) * w
        self.slots = torch.cat(
            [
                torch.arange(self.widths[k], device=_CPU) + slot_of_band[k]
                for k in range(len(widths))
            ]
        )
        self.trivial_slots = self.in_order and all(self.contiguous)

    def group_index(self, g: int, feature_index: Sequence[Tensor], pad_value: int) -> Tensor:
        """(bands, width) gather index into the features; padding points at `pad_value`."""
        w = self.width[g]
        rows = [
            F.pad(feature_index[k], (0, w - len(feature_index[k])), value=pad_value)
            for k in self.bands[g]
        ]
        return torch.stack(rows)


def _padded_stack(tensors: Sequence[Tensor], width: int, dim: int) -> Tensor:
    """Stack tensors after zero-padding each along `dim` (negative) to `width`."""
    padded = []
    for t in tensors:
        pad = [0, 0] * (-dim - 1) + [0, width - t.shape[dim]]
        padded.append(F.pad(t, pad) if width != t.shape[dim] else t)
    return torch.stack(padded)


class BandSplit(nn.Module):
    """Per-band RMSNorm + Linear from spectrum features to `dim`, batched over band groups.

    dim_inputs: features per band; feature_index: each band's feature positions in the flattened
    spectrum (None means consecutive bands, BS-RoFormer style).
    forward: (batch, time, features) -> (batch, time, bands, dim).
    """

    def __init__(
        self, dim: int, dim_inputs: Sequence[int], feature_index: Sequence[Tensor] | None = None
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_inputs = tuple(int(d) for d in dim_inputs)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in self.dim_inputs
        )
        if feature_index is None:
            starts = np.cumsum((0,) + self.dim_inputs[:-1])
            feature_index = [
                torch.arange(s, s + d, device=_CPU) for s, d in zip(starts, self.dim_inputs)
            ]
        self.groups = BandGroups(self.dim_inputs)
        self._starts = [int(feature_index[g[0]][0]) for g in self.groups.bands]
        for g in range(len(self.groups.bands)):
            # Padding gathers the zero column appended to the features at run time (index -1).
            idx = self.groups.group_index(g, feature_index, pad_value=-1)
            self.register_buffer(f"_index{g}", idx, persistent=False)
            scale = torch.tensor(
                [self.dim_inputs[k] ** 0.5 for k in self.groups.bands[g]], device=_CPU
            )
            self.register_buffer(f"_scale{g}", scale[:, None], persistent=False)
        self._cache = WeightCache()
        # Contiguous groups read a view of the spectrum; that needs consecutive feature positions.
        for g in range(len(self.groups.bands)):
            if self.groups.contiguous[g]:
                idx = getattr(self, f"_index{g}").reshape(-1)
                first = int(idx[0])
                if not torch.equal(idx, torch.arange(first, first + idx.numel(), device=_CPU)):
                    self.groups.contiguous[g] = False

    def _weights(self) -> list[tuple[Tensor, Tensor]]:
        """Per group: weight (G, width, dim) with gamma folded in, bias (G, dim)."""
        out = []
        for g, bands in enumerate(self.groups.bands):
            mods = [self.to_features[k] for k in bands]
            width = self.groups.width[g]
            w = _padded_stack([m[1].weight for m in mods], width, -1)
            gamma = _padded_stack([m[0].gamma for m in mods], width, -1)
            w = w * gamma.unsqueeze(1)  # (G, dim, width): gamma folded into the Linear
            out.append((w.transpose(1, 2), torch.stack([m[1].bias for m in mods])))
        return out

    def forward(self, x: Tensor) -> Tensor:
        weights = self._cache.get(list(self.parameters()), self._weights)
        padded = None
        outs = []
        for g, bands in enumerate(self.groups.bands):
            width = self.groups.width[g]
            if self.groups.contiguous[g]:
                start = self._starts[g]
                xg = x[..., start : start + len(bands) * width].unflatten(-1, (len(bands), width))
            else:
                if padded is None:
                    padded = F.pad(x, (0, 1))
                xg = padded[..., getattr(self, f"_index{g}")]
            # MSST's RMSNorm is F.normalize(x) * sqrt(dim_in); padding adds zeros to the norm.
            norm = torch.linalg.vector_norm(xg, dim=-1, keepdim=True).clamp_min(1e-12)
            xg = xg * (getattr(self, f"_scale{g}") / norm)
            w, bias = weights[g]
            yg = torch.einsum("btgw,gwd->btgd", xg, w) + bias
            outs.append(yg)
        y = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        if not self.groups.in_order:
            y = y.index_select(2, self.groups.inverse.to(y.device))
        return y


def _mlp(dim: int, dim_out: int, dim_hidden: int, n_linear: int) -> nn.Sequential:
    """Linear layers with Tanh between them (MSST's `MLP`), `n_linear` Linear layers in all."""
    dims = [dim] + [dim_hidden] * (n_linear - 1) + [dim_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < n_linear - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per-band MLP + GLU from `dim` features to the band's mask features, batched over groups.

    n_linear: number of Linear layers per band (MSST's BS uses depth, Mel uses depth + 1).
    forward: (bands, rows, dim) band-major features -> (rows, sum(dim_inputs)) in band order.
    """

    def __init__(
        self, dim: int, dim_inputs: Sequence[int], n_linear: int, mlp_expansion_factor: int
    ):
        super().__init__()
        if n_linear < 1:
            raise ConfigError(
                "model.mask_estimator_depth is too small: the mask estimators need at least "
                f"one Linear layer, got {n_linear}"
            )
        self.dim_inputs = tuple(int(d) for d in dim_inputs)
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, 2 * d, hidden, n_linear), nn.GLU(dim=-1))
            for d in self.dim_inputs
        )
        self.n_linear = n_linear
        self.groups = BandGroups(self.dim_inputs)
        # Groups of consecutive bands read a slice of the band-major input; others gather.
        self._slices = [
            slice(b[0], b[-1] + 1) if b == tuple(range(b[0], b[-1] + 1)) else None
            for b in self.groups.bands
        ]
        for g, bands in enumerate(self.groups.bands):
            self.register_buffer(f"_bands{g}", torch.tensor(bands, device=_CPU), persistent=False)
        self._cache = WeightCache()

    def _linears(self, k: int) -> list[nn.Linear]:
        return [m for m in self.to_freqs[k][0] if isinstance(m, nn.Linear)]

    def _weights(self) -> list[list[tuple[Tensor, Tensor]]]:
        """Per group, per layer: weight (G, in, out) and bias (G, 1, out), zero-padded."""
        out = []
        for g, bands in enumerate(self.groups.bands):
            width = self.groups.width[g]
            layers = []
            for i in range(self.n_linear):
                lins = [self._linears(k)[i] for k in bands]
                if i == self.n_linear - 1:  # GLU halves padded separately: [value | gate]
                    w = torch.stack([_pad_halves(lin.weight, width, 0) for lin in lins])
                    bias = torch.stack([_pad_halves(lin.bias, width, 0) for lin in lins])
                else:
                    w = torch.stack([lin.weight for lin in lins])
                    bias = torch.stack([lin.bias for lin in lins])
                layers.append((w.transpose(1, 2), bias.unsqueeze(1)))
            out.append(layers)
        return out

    def forward(self, x: Tensor) -> Tensor:
        weights = self._cache.get(list(self.parameters()), self._weights)
        outs = []
        for g in range(len(self.groups.bands)):
            sl = self._slices[g]
            h = x[sl] if sl is not None else x.index_select(0, getattr(self, f"_bands{g}"))
            for i, (w, bias) in enumerate(weights[g]):
                h = torch.baddbmm(bias, h, w)
                if i < self.n_linear - 1:
                    h = torch.tanh(h)
            outs.append(F.glu(h, dim=-1))  # (G, rows, width)
        y = torch.cat([o.transpose(0, 1).flatten(1) for o in outs], dim=1)
        if not self.groups.trivial_slots:
            y = y.index_select(1, self.groups.slots.to(y.device))
        return y


def _pad_halves(t: Tensor, width: int, dim: int) -> Tensor:
    """Split `t` in two halves along `dim` and zero-pad each to `width` (GLU value | gate)."""
    if t.shape[dim] == 2 * width:
        return t
    a, b = t.chunk(2, dim=dim)
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, width - a.shape[dim]]
    return torch.cat([F.pad(a, pad), F.pad(b, pad)], dim=dim)
