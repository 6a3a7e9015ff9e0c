"""Multichannel Wiener filtering for the magnitude (`cac=False`) hybrid models.

Same computation as demucs 4.1.0 (`HDemucs._wiener` and the vendored open-unmix
`demucs/wiener.py`): the estimated magnitudes take the mixture's phase, and with `iterations`
> 0 an EM loop re-estimates each source's spatial covariance and applies the multichannel
Wiener gain. demucs runs it per item and per window of 300 frames; the windows here run as one
batch (frames past the end are zero, which changes neither the covariances nor the outputs).

Axis legend: b batch, s sources, c audio channels, f bins, t frames, n windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_WINDOW = 300  # frames per filtering window (demucs's wiener_win_len)
_EPS = 1e-10
_SCALE = 10.0  # open-unmix's scale_factor: mixtures above 10 are scaled down during EM


def wiener(mag: Tensor, mix: Tensor, iterations: int, residual: bool = False) -> Tensor:
    """mag (b, s, c, f, t) float magnitudes, mix (b, c, f, t) complex -> (b, s, c, f, t) complex.

    `residual` adds the mixture minus the sum of the estimates as an extra source during the
    filtering (then drops it), as demucs's `wiener_residual` does.
    """
    phase = torch.atan2(mix.imag, mix.real).unsqueeze(1)
    y = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
    if residual:
        y = torch.cat([y, (mix - y.sum(dim=1)).unsqueeze(1)], dim=1)
    if iterations > 0:
        y = _windowed_em(y, mix, iterations)
    return y[:, :-1] if residual else y


def _windowed_em(y: Tensor, mix: Tensor, iterations: int) -> Tensor:
    """Run the EM on windows of 300 frames (all windows of all items as one batch)."""
    b, t = y.shape[0], y.shape[-1]
    n = -(-t // _WINDOW)
    pad = n * _WINDOW - t

    def windows(x: Tensor) -> Tensor:  # (b, ..., t) -> (b·n, ..., 300)
        x = F.pad(x, (0, pad)).unflatten(-1, (n, _WINDOW))
        return x.movedim(-2, 1).flatten(0, 1)

    yw, xw = windows(y), windows(mix)  # (b·n, s, c, f, w), (b·n, c, f, w)
    scale = (xw.abs().flatten(1).amax(dim=1) / _SCALE).clamp_min(1.0)  # per window
    scale = scale.view(-1, 1, 1, 1)
    out = _em(yw / scale[:, None], xw / scale, iterations) * scale[:, None]
    out = out.unflatten(0, (b, n)).movedim(1, -2).flatten(-2, -1)
    return out[..., :t]


def _em(y: Tensor, x: Tensor, iterations: int) -> Tensor:
    """open-unmix's `expectation_maximization`: y (n, s, c, f, t), x (n, c, f, t) complex."""
    c = x.shape[1]
    eye = torch.eye(c, dtype=x.dtype, device=x.device)
    regularization = _EPS**0.5 * eye  # (c, c)
    for _ in range(iterations):
        v = (y.real**2 + y.imag**2).mean(dim=2)  # (n, s, f, t) power averaged over channels
        cov = torch.einsum("nsaft,nsbft->nsfab", y, y.conj())
        r = cov / (_EPS + v.sum(dim=-1))[..., None, None].to(cov.dtype)  # (n, s, f, c, c)
        cxx = regularization + torch.einsum("nsft,nsfab->nftab", v.to(r.dtype), r)
        solved = torch.einsum("nftab,nbft->nfta", _invert(cxx), x)  # Cxx^-1 x: (n, f, t, c)
        y = v.unsqueeze(2) * torch.einsum("nsfab,nftb->nsaft", r, solved)
    return y


def _invert(m: Tensor) -> Tensor:
    """Inverse of (..., c, c) complex matrices for c = 1 or 2, in closed form like open-unmix."""
    if m.shape[-1] == 1:
        return _reciprocal(m)
    det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    inv_det = _reciprocal(det)
    rows = [
        torch.stack([inv_det * m[..., 1, 1], -inv_det * m[..., 0, 1]], dim=-1),
        torch.stack([-inv_det * m[..., 1, 0], inv_det * m[..., 0, 0]], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def _reciprocal(z: Tensor) -> Tensor:
    """1 / z as conj(z) / |z|^2 (open-unmix's `_inv`)."""
    return z.conj() / (z.real**2 + z.imag**2)
