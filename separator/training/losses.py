"""Training objectives (training code, not the models): a weighted sum of waveform and
multi-resolution STFT terms, set by a recipe's `loss:` section.

- `l1`: mean |est − ref| on the waveform (the RoFormer papers; MSST's `l1_loss`).
- `mse`: mean (est − ref)² (MSST's `mse_loss`).
- `masked_mse`: MSST's default `masked_loss` (utils/losses.py at ccc011a): the squared error,
  averaged per stem and example when `coarse`, with the values at or above their stem's
  `q`-quantile over the batch dropped (robust to bad training excerpts). MSST's quirk, kept: the
  comparison is strict, so with `coarse` a batch of one example drops it and the term is 0.
- `multi_stft`: Σ over `stft_windows` of mean |STFT_w(est) − STFT_w(ref)| with a Hann window of
  w, n_fft = max(w, `stft_n_fft`), hop `stft_hop` (the BS-/Mel-RoFormer objective, MSST's
  `forward(..., target)`).

Settings a recipe leaves unset come from the model's config where its family's MSST config
defines them (the RoFormers' `multi_stft_resolution_loss_weight`, `..._window_sizes`,
`multi_stft_hop_size`, `multi_stft_normalized`, `stft_n_fft`), else from the defaults below, so
a recipe without a `loss:` section trains a RoFormer exactly as before: l1 + the model's
multi-resolution STFT term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from separator.errors import ConfigError

# Loss setting -> the model-config field (MSST's name) that gives it when the recipe does not.
FROM_MODEL = {
    "multi_stft": "multi_stft_resolution_loss_weight",
    "stft_windows": "multi_stft_resolutions_window_sizes",
    "stft_hop": "multi_stft_hop_size",
    "stft_normalized": "multi_stft_normalized",
    "stft_n_fft": "stft_n_fft",
}
DEFAULTS = {
    "multi_stft": 0.0,
    "stft_windows": (4096, 2048, 1024, 512, 256),
    "stft_hop": 147,
    "stft_normalized": False,
    "stft_n_fft": 0,  # n_fft = the window size
}


@dataclass(frozen=True)
class LossSpec:
    """A resolved objective: every weight and setting known (see the module doc)."""

    l1: float = 1.0
    mse: float = 0.0
    masked_mse: float = 0.0
    q: float = 0.95
    coarse: bool = True
    multi_stft: float = 0.0
    stft_windows: tuple[int, ...] = DEFAULTS["stft_windows"]
    stft_hop: int = 147
    stft_n_fft: int = 0
    stft_normalized: bool = False

    def __post_init__(self) -> None:
        weights = {k: getattr(self, k) for k in ("l1", "mse", "masked_mse", "multi_stft")}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ConfigError(f"loss weights must be >= 0 with one above 0, got {weights}")
        if not 0 < self.q <= 1:
            raise ConfigError(f"loss.q must be in (0, 1], got {self.q}")
        if self.multi_stft and (not self.stft_windows or min(self.stft_windows) < 2):
            raise ConfigError(f"loss.stft_windows must be sizes >= 2, got {self.stft_windows}")
        if self.multi_stft and self.stft_hop < 1:
            raise ConfigError(f"loss.stft_hop must be >= 1, got {self.stft_hop}")


def loss_spec(section: Any = None, model_config: Any = None) -> LossSpec:
    """Resolve a recipe's `loss:` section (a mapping or dataclass whose None values are unset)
    against the model's config object (`model.config`; None or any object without the fields)."""
    if section is None:
        given = {}
    elif isinstance(section, Mapping):
        given = dict(section)
    else:
        given = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    values = {k: v for k, v in given.items() if v is not None}
    for key, field_name in FROM_MODEL.items():
        if given.get(key) is None:
            value = getattr(model_config, field_name, None)
            values[key] = DEFAULTS[key] if value is None else value
    values["stft_windows"] = tuple(int(w) for w in values["stft_windows"])
    try:
        return LossSpec(**values)
    except TypeError as e:
        raise ConfigError(f"bad loss section: {e}") from None


def separation_loss(estimate: Tensor, target: Tensor, spec: LossSpec | Any) -> Tensor:
    """estimate, target: (batch, stems, channels, time). Returns a scalar, computed in float32.

    `spec`: a `LossSpec`, or a model config (the RoFormer objective its MSST config defines).
    """
    if not isinstance(spec, LossSpec):
        spec = loss_spec(None, spec)
    estimate, target = estimate.float(), target.float()
    loss = estimate.new_zeros(())
    if spec.l1:
        loss = F.l1_loss(estimate, target)
        if spec.l1 != 1:  # weight 1 adds no rounding: the RoFormer recipes' numbers are kept
            loss = spec.l1 * loss
    if spec.mse:
        loss = loss + spec.mse * F.mse_loss(estimate, target)
    if spec.masked_mse:
        loss = loss + spec.masked_mse * masked_mse(estimate, target, spec.q, spec.coarse)
    if spec.multi_stft:
        loss = loss + spec.multi_stft * multi_stft(estimate, target, spec)
    return loss


def masked_mse(estimate: Tensor, target: Tensor, q: float, coarse: bool) -> Tensor:
    """MSST's `masked_loss` (utils/losses.py, ccc011a): per stem, drop errors >= the q-quantile.

    (b, n, s, t) -> squared error (n, b, s, t) -> mean over (s, t) when `coarse` -> (n, b·…);
    the quantile (linear interpolation) is taken per stem over the rest, without gradient.
    """
    loss = (estimate - target).square().transpose(0, 1)
    if coarse:
        loss = loss.mean(dim=(-1, -2))
    loss = loss.reshape(loss.shape[0], -1)
    quantile = torch.quantile(loss.detach(), q, dim=1, keepdim=True)
    return (loss * (loss < quantile)).mean()


def multi_stft(estimate: Tensor, target: Tensor, spec: LossSpec) -> Tensor:
    """Σ_w mean |STFT_w(est − ref)| over the spec's window sizes (see the module doc)."""
    # The STFT is linear, so |STFT(est) - STFT(ref)| = |STFT(est - ref)|: one transform, not two.
    diff = (estimate - target).reshape(-1, estimate.shape[-1])
    total = estimate.new_zeros(())
    for window in spec.stft_windows:
        kw = dict(
            n_fft=max(window, spec.stft_n_fft),
            win_length=window,
            hop_length=spec.stft_hop,
            normalized=spec.stft_normalized,
            window=torch.hann_window(window, device=estimate.device),
            return_complex=True,
        )
        total = total + torch.stft(diff, **kw).abs().mean()
    return total
