"""The part BS-RoFormer and Mel-Band RoFormer share: STFT, axial transformer trunk, masking, iSTFT.

Axis legend used in shapes:
    b batch, s audio channel, n stem, f STFT bin, t STFT frame, k band, d feature, c real/imag.

Subclasses define the band layout: which spectrum features feed each band (`feature_index`) and
how the per-band mask features are put back onto the spectrum (`_assemble_masks`). MSST's
variants (`experimental.py`, `conformer.py`) replace the per-axis stacks (`_block`) and, for the
value-residual streams, the trunk (`_trunk`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from separator.nn.bands import BandSplit, MaskEstimator, stft_bins
from separator.nn.config import RoformerConfig
from separator.nn.family import Family, check_channels, msst_audio, msst_stems, set_io
from separator.nn.layers import PolarEmbedding, RMSNorm, RotaryEmbedding, Transformer
from separator.nn.stft import istft, stft


class RoformerBase(nn.Module):
    """Complex-mask band RoFormer. forward: (b, s, time) -> (b, n, s, time), same time length.

    Besides the MSST parameters, a model carries what the inference engine needs:
    `sample_rate`, `stems`, `audio_channels` and `chunk_size` (samples). The loader sets them from
    the YAML's `audio:` and `training:` sections; `set_io` changes them.
    """

    config: RoformerConfig
    config_class: type[RoformerConfig] = RoformerConfig
    # Estimators of Mel: depth hidden layers; of BS: depth - 1 (MSST's two `MLP` functions differ).
    _extra_mask_layer: int = 0

    def __init__(
        self,
        config: RoformerConfig,
        band_widths: Sequence[int],
        feature_index: Sequence[Tensor] | None,
        *,
        final_norm: bool,
        sample_rate: int,
    ) -> None:
        super().__init__()
        self.config = config
        c = config
        self.n_bins = stft_bins(c.stft_n_fft)
        # One positional embedding per axis, shared by every layer of that axis (as in MSST);
        # a tuple, so that it is not registered twice in the state dict.
        self._rotary = self._positional_embeddings()
        self.layers = nn.ModuleList(
            nn.ModuleList(self._block(i, norm_output=not final_norm)) for i in range(c.depth)
        )
        if final_norm:
            self.final_norm = RMSNorm(c.dim)
        self.band_split = BandSplit(c.dim, band_widths, feature_index)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                c.dim,
                band_widths,
                c.mask_estimator_depth + self._extra_mask_layer,
                c.mlp_expansion_factor,
            )
            for _ in range(c.num_stems)
        )
        self.register_buffer("stft_window", torch.hann_window(c.stft_win_length), persistent=False)
        self.set_io(sample_rate=sample_rate, stems=None, chunk_size=None)

    # --- the per-axis stacks (subclasses replace them) -----------------------------------------
    def _positional_embeddings(self) -> tuple[nn.Module, nn.Module]:
        """(time, frequency) embeddings: RoPE, or PoPE where the config asks for it."""
        c = self.config
        if getattr(c, "use_pope", False):
            return PolarEmbedding(c.dim_head, c.heads), PolarEmbedding(c.dim_head, c.heads)
        return RotaryEmbedding(c.dim_head), RotaryEmbedding(c.dim_head)

    def _stack_kwargs(self, norm_output: bool) -> dict[str, Any]:
        c = self.config
        return dict(
            dim=c.dim,
            heads=c.heads,
            dim_head=c.dim_head,
            attn_dropout=c.attn_dropout,
            ff_dropout=c.ff_dropout,
            norm_output=norm_output,
        )

    def _block(self, index: int, norm_output: bool) -> list[nn.Module]:
        """Layer `index`: [linear-attention transformer,] time transformer, frequency
        transformer."""
        c, kw = self.config, self._stack_kwargs(norm_output)
        block: list[nn.Module] = []
        if c.linear_transformer_depth > 0:
            block.append(Transformer(depth=c.linear_transformer_depth, linear_attn=True, **kw))
        for depth, embed in zip((c.time_transformer_depth, c.freq_transformer_depth), self._rotary):
            key = "pope_embed" if isinstance(embed, PolarEmbedding) else "rotary_embed"
            block.append(Transformer(depth=depth, **{key: embed}, **kw))
        return block

    # --- what the engine reads --------------------------------------------------------------
    def set_io(
        self, *, sample_rate: int, stems: Sequence[str] | None, chunk_size: int | None
    ) -> None:
        """Set the attributes of the engine protocol (rate in Hz, stem names, chunk in samples)."""
        n = self.config.num_stems
        set_io(
            self,
            sample_rate=int(sample_rate),
            stems=stems if stems is not None else [f"stem{i}" for i in range(n)],
            chunk_size=int(chunk_size) if chunk_size else 8 * int(sample_rate),
            audio_channels=self.config.audio_channels,
            num_stems=n,
        )

    # --- forward --------------------------------------------------------------------------
    def forward(self, audio: Tensor) -> Tensor:
        """audio: (b, s, time) float -> (b, n, s, time); (b, time) is taken as mono."""
        if audio.dim() == 2:
            audio = audio.unsqueeze(1)
        b, s, length = audio.shape
        check_channels(s, self.audio_channels, "model.stereo")
        spec = self._stft(audio)  # (b, s, f, t) complex64
        t = spec.shape[-1]
        # (b, s, f, t, c) -> (b, t, f·s·c): MSST's `b s f t c -> b t (f s c)` feature order.
        feats = torch.view_as_real(spec).permute(0, 3, 2, 1, 4).reshape(b, t, -1)
        x = self.band_split(feats)  # (b, t, k, d)
        x = self._trunk(x)
        if hasattr(self, "final_norm"):
            x = self.final_norm(x)
        k, d = x.shape[2], x.shape[3]
        xb = x.permute(2, 0, 1, 3).reshape(k, b * t, d)  # band-major rows for the estimators
        masks = torch.stack([est(xb) for est in self.mask_estimators], dim=1)  # (b·t, n, feat)
        masks = self._assemble_masks(masks.float()).view(b, t, -1, self.n_bins, s, 2)
        return self._istft(spec, masks, length)

    def _trunk(self, x: Tensor) -> Tensor:
        """Axial attention: each block runs over time (per band), then over bands (per frame)."""
        b, t, k, d = x.shape
        rot_t = self._rotary[0].rotation(t).to(x.device)
        rot_f = self._rotary[1].rotation(k).to(x.device)
        store: list[Tensor] = []
        for block in self.layers:
            if len(block) == 3:
                x = self._run(block[0], x.reshape(b, t * k, d), None).view(b, t, k, d)
            time_t, freq_t = block[-2], block[-1]
            if self.config.skip_connection:
                for prev in store:
                    x = x + prev
            # Contiguous sequences so every Linear below is one plain matmul (with b == 1
            # reshape would return a strided view, and matmul would fall back to bmm).
            x = x.transpose(1, 2).reshape(b * k, t, d).contiguous()
            x = self._run(time_t, x, rot_t)
            x = x.view(b, k, t, d).transpose(1, 2).reshape(b * t, k, d).contiguous()
            x = self._run(freq_t, x, rot_f).view(b, t, k, d)
            if self.config.skip_connection:
                store.append(x)
        return x

    def _run(self, stack: nn.Module, x: Tensor, rotation: Any, *extra: Any) -> Any:
        if self.config.use_torch_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(stack, x, rotation, *extra, use_reentrant=False)
        return stack(x, rotation, *extra)

    def _stft_args(self) -> dict:
        c = self.config
        return dict(
            n_fft=c.stft_n_fft,
            hop_length=c.stft_hop_length,
            win_length=c.stft_win_length,
            window=self.stft_window,
            normalized=c.stft_normalized,
        )

    def _stft(self, audio: Tensor) -> Tensor:
        """(b, s, time) -> (b, s, f, t) complex, always in float32 (also under autocast)."""
        return stft(audio, **self._stft_args())

    def _istft(self, spec: Tensor, masks: Tensor, length: int) -> Tensor:
        """Apply complex masks (b, t, n, f, s, c) to spec (b, s, f, t); iSTFT to (b, n, s, time)."""
        with torch.autocast(spec.device.type, enabled=False):
            m = torch.view_as_complex(masks.float())  # (b, t, n, f, s)
            out = m.permute(0, 2, 4, 3, 1) * spec.unsqueeze(1)  # (b, n, s, f, t)
            if getattr(self.config, "zero_dc", False):  # experimental RoFormers have none
                out[:, :, :, 0] = 0
        return istft(out, **self._stft_args(), length=length)

    def _assemble_masks(self, masks: Tensor) -> Tensor:
        """(rows, n, band features) -> (rows, n, f·s·c) on the full spectrum."""
        raise NotImplementedError


def variant_match(marker_keys: set[str], *, mel: bool) -> Callable[[Mapping[str, Any]], int]:
    """`Family.msst_match` of a RoFormer variant: a BS (no `num_bands`) or Mel (`num_bands`)
    section that has any of the variant's own keys scores 3, above the plain RoFormers."""

    def match(model: Mapping[str, Any]) -> int:
        keys = set(model)
        if not {"dim", "depth"} <= keys or not keys & marker_keys:
            return 0
        return 3 if ("num_bands" in keys) == mel else 0

    return match


def roformer_family(
    name: str, cls: type[RoformerBase], msst_match: Callable[[Mapping[str, Any]], int]
) -> Family:
    """The `Family` record of a RoFormer class: its card `model:` is an MSST `model:` section."""

    def build(
        model: Mapping[str, Any], *, sample_rate: int, stems: Sequence[str], chunk_size: int
    ) -> RoformerBase:
        kwargs = dict(model)
        if "sample_rate" not in {f.name for f in dataclasses.fields(cls.config_class)}:
            kwargs["sample_rate"] = sample_rate  # BS-RoFormer's own config has no rate
        module = cls(**kwargs)
        module.set_io(sample_rate=sample_rate, stems=stems, chunk_size=chunk_size)
        return module

    def from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
        model = dict(config.get("model") or {})
        rate, chunk = msst_audio(config)
        stems = msst_stems(config, int(model.get("num_stems", 1)))
        return {"model": model, "stems": stems, "sample_rate": rate, "chunk_size": chunk}

    return Family(
        name=name,
        build=build,
        from_msst=from_msst,
        msst_match=msst_match,
        description=cls.__doc__.splitlines()[0] if cls.__doc__ else name,
    )
