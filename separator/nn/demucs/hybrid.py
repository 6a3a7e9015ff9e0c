"""What HDemucs and HTDemucs share: the padded STFT, the two-branch U-Net and its assembly.

The spectrogram branch runs on the STFT (complex-as-channels, or magnitudes), the time branch
on the waveform; they merge where the frequency axis has shrunk to one bin (HDemucs) or meet in
a cross-transformer (HTDemucs), and split again in the decoder. Subclasses define `_bottom`.

Axis legend: b batch, c audio channels, s sources, f bins, t frames, n samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.nn.demucs.blocks import check, pad1d
from separator.nn.demucs.hlayers import FreqEmbedding, HDecLayer, HEncLayer, MultiWrap
from separator.nn.demucs.wiener import wiener
from separator.nn.stft import istft, stft


def layer_plan(depth: int, nfft: int, kernel_size: int, stride: int, time_stride: int) -> list:
    """Per encoder layer: (freq, kernel, stride, pad, last_freq, bins after the layer).

    Frequency layers divide the bins by `stride` until at most `kernel_size` remain; that layer
    takes them all at once (no padding, `last_freq`) and the layers after it act on time.
    """
    plan, freqs = [], nfft // 2
    for _ in range(depth):
        freq = freqs > 1
        ker, stri, pad, last_freq = kernel_size, stride, True, False
        if not freq:
            check(freqs == 1, f"nfft={nfft}: the frequency axis does not shrink to one bin")
            ker, stri = 2 * time_stride, time_stride
        elif freqs <= kernel_size:
            ker, pad, last_freq = freqs, False, True
        if freq:
            freqs = 1 if freqs <= kernel_size else freqs // stride
        plan.append((freq, ker, stri, pad, last_freq, freqs))
    return plan


@dataclass(frozen=True)
class UNetArgs:
    """The constructor arguments HDemucs and HTDemucs share (demucs's names and meanings)."""

    sources: Sequence[str]
    audio_channels: int
    channels: int
    channels_time: int | None
    growth: float
    nfft: int
    cac: bool
    depth: int
    rewrite: bool
    multi_freqs: Sequence[float] | None
    multi_freqs_depth: int
    freq_emb: float
    emb_scale: float
    emb_smooth: bool
    kernel_size: int
    time_stride: int
    stride: int
    context: int
    context_enc: int
    norm_starts: int
    norm_groups: int
    dconv_mode: int
    dconv_depth: int
    dconv_comp: float
    dconv_init: float
    dconv_attn: float = math.inf  # HTDemucs has no attention/LSTM in its DConvs
    dconv_lstm: float = math.inf

    @classmethod
    def pick(cls, arguments: Mapping[str, Any]) -> UNetArgs:
        """The fields found in a constructor's arguments (its `locals()`)."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})


def _widths(plan: list, u: UNetArgs) -> list[tuple[int, ...]]:
    """Per layer: (spec in, spec out, time in, time out, spec decoder out, time decoder out).

    Widths grow by `growth` per layer; the merge layer widens both branches to the larger one;
    the outermost decoders output sources x channels (x 2 for CaC)."""
    chin, chout, chout_z = u.audio_channels, u.channels_time or u.channels, u.channels
    chin_z = 2 * chin if u.cac else chin
    out_t = u.audio_channels * len(u.sources)
    out_z = 2 * out_t if u.cac else out_t
    widths = []
    for index, step in enumerate(plan):
        if step[4]:  # last_freq
            chout_z = chout = max(chout, chout_z)
        dec_z, dec_t = (out_z, out_t) if index == 0 else (chin_z, chin)
        widths.append((chin_z, chout_z, chin, chout, dec_z, dec_t))
        chin, chin_z = chout, chout_z
        chout, chout_z = int(u.growth * chout), int(u.growth * chout_z)
    return widths


def _layer_kwargs(index: int, step: tuple, u: UNetArgs) -> tuple[dict, dict]:
    """Keyword arguments of layer `index` of the spectrogram branch and of the time branch."""
    freq, ker, stri, pad = step[:4]
    dconv_kw = dict(
        depth=u.dconv_depth,
        compress=u.dconv_comp,
        init=u.dconv_init,
        gelu=True,
        lstm=index >= u.dconv_lstm,
        attn=index >= u.dconv_attn,
    )
    kw = dict(
        kernel_size=ker,
        stride=stri,
        freq=freq,
        pad=pad,
        rewrite=u.rewrite,
        norm=index >= u.norm_starts,
        norm_groups=u.norm_groups,
        dconv_kw=dconv_kw,
    )
    return kw, dict(kw, freq=False, kernel_size=u.kernel_size, stride=u.stride, pad=True)


class HybridBase(nn.Module):
    """Spectrogram + waveform U-Net. forward: (b, c, n) -> (b, s, c, n)."""

    hybrid: bool = True
    hybrid_old: bool = False

    def _build(self, u: UNetArgs) -> None:
        """Create encoder, decoder, tencoder, tdecoder and freq_emb in demucs's order."""
        check(len(u.sources) > 0, "`sources` must name at least one source")
        check(u.nfft >= 4 and u.nfft % 4 == 0, f"nfft={u.nfft} must be a multiple of 4")
        self.sources, self.audio_channels, self.cac = list(u.sources), u.audio_channels, u.cac
        self.kernel_size, self.context, self.stride = u.kernel_size, u.context, u.stride
        self.depth, self.channels = u.depth, u.channels
        self.nfft, self.hop_length = u.nfft, u.nfft // 4
        self.freq_emb = None
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        if self.hybrid:
            self.tencoder, self.tdecoder = nn.ModuleList(), nn.ModuleList()
        plan = layer_plan(u.depth, u.nfft, u.kernel_size, u.stride, u.time_stride)
        merge = [i for i, step in enumerate(plan) if step[4]]
        check(
            not (self.hybrid and merge) or u.stride ** (merge[0] + 1) == u.nfft // 4,
            f"nfft={u.nfft}: the time branch (stride {u.stride}) does not reach the STFT hop "
            f"{u.nfft // 4} where the branches merge; use nfft = 4·stride^k",
        )
        widths = _widths(plan, u)
        for index, (step, width) in enumerate(zip(plan, widths)):
            self._add_layer(index, step, width, u)
        if u.freq_emb:  # after layer 0, over its output bins and channels
            self.freq_emb = FreqEmbedding(
                plan[0][5], widths[0][1], smooth=u.emb_smooth, scale=u.emb_scale
            )
            self.freq_emb_scale = u.freq_emb
        self.register_buffer("window", torch.hann_window(u.nfft), persistent=False)

    def _add_layer(self, index: int, step: tuple, width: tuple, u: UNetArgs) -> None:
        """Encoder and decoder layers (both branches) of depth `index`, in demucs's order."""
        freq, last_freq = step[0], step[4]
        z_in, z_out, t_in, t_out, z_dec, t_dec = width
        kw, kwt = _layer_kwargs(index, step, u)
        multi = bool(u.multi_freqs) and index < u.multi_freqs_depth
        last = index == 0
        enc = HEncLayer(z_in, z_out, dconv=u.dconv_mode & 1, context=u.context_enc, **kw)
        if self.hybrid and freq:
            tenc = HEncLayer(t_in, t_out, dconv=u.dconv_mode & 1, context=u.context_enc,
                             empty=last_freq, **kwt)  # fmt: skip
            self.tencoder.append(tenc)
        self.encoder.append(MultiWrap(enc, u.multi_freqs) if multi else enc)
        dec = HDecLayer(z_out, z_dec, dconv=u.dconv_mode & 2, last=last, context=u.context,
                        **dict(kw, context_freq=not multi))  # fmt: skip
        dec = MultiWrap(dec, u.multi_freqs) if multi else dec
        if self.hybrid and freq:
            tdec = HDecLayer(t_out, t_dec, dconv=u.dconv_mode & 2, empty=last_freq, last=last,
                             context=u.context, **kwt)  # fmt: skip
            self.tdecoder.insert(0, tdec)
        self.decoder.insert(0, dec)

    # --- spectrogram -----------------------------------------------------------------------
    def _spec(self, x: Tensor) -> Tensor:
        """(b, c, n) -> (b, c, nfft/2, ceil(n / hop)) complex: the last bin is dropped, and
        hybrid models pad so that frame k covers samples [k·hop, (k+1)·hop)."""
        hl = self.hop_length
        if self.hybrid:
            frames = math.ceil(x.shape[-1] / hl)
            pad = hl // 2 * 3
            mode = "constant" if self.hybrid_old else "reflect"  # hybrid_old: MDX padding bug
            x = pad1d(x, pad, pad + frames * hl - x.shape[-1], mode)
        z = stft(x, n_fft=self.nfft, hop_length=hl, window=self.window, normalized=True)
        z = z[..., :-1, :]
        return z[..., 2 : 2 + frames] if self.hybrid else z

    def _ispec(self, z: Tensor, length: int) -> Tensor:
        """(..., nfft/2, frames) complex -> (..., length), undoing `_spec`'s padding."""
        hl = self.hop_length
        z = F.pad(z, (0, 0, 0, 1))
        if not self.hybrid:
            return self._istft(z, length)
        z = F.pad(z, (2, 2))
        pad = hl // 2 * 3
        if self.hybrid_old:  # demucs keeps this models' crop: no 2·pad term, crop from 0
            return self._istft(z, hl * math.ceil(length / hl))[..., :length]
        x = self._istft(z, hl * math.ceil(length / hl) + 2 * pad)
        return x[..., pad : pad + length]

    def _istft(self, z: Tensor, length: int) -> Tensor:
        return istft(
            z,
            n_fft=self.nfft,
            hop_length=self.hop_length,
            window=self.window,
            normalized=True,
            length=length,
        )

    def _magnitude(self, z: Tensor) -> Tensor:
        """(b, c, f, t) complex -> (b, 2c, f, t) real/imag channels (CaC), or (b, c, f, t) |z|."""
        if not self.cac:
            return z.abs()
        b, c, f, t = z.shape
        return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, f, t)

    def _mask(self, z: Tensor, m: Tensor) -> Tensor:
        """Network output m (b, s, c', f, t) -> source spectrograms (b, s, c, f, t) complex."""
        if self.cac:
            b, s, _, f, t = m.shape
            out = m.view(b, s, -1, 2, f, t).permute(0, 1, 2, 4, 5, 3)
            return torch.view_as_complex(out.contiguous())
        iters = self.end_iters if self.training else self.wiener_iters
        if iters < 0:
            z = z[:, None]
            return z / (1e-8 + z.abs()) * m
        return wiener(m, z, iters, residual=self.wiener_residual)

    # --- the U-Net -------------------------------------------------------------------------
    def _forward(self, mix: Tensor) -> Tensor:
        """(b, c, n) -> (b, s, c, n) at the input's length (no training-length logic)."""
        length = mix.shape[-1]
        z = self._spec(mix)
        x = self._magnitude(z)
        b, _, f, t = x.shape
        mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        xt = None
        if self.hybrid:
            meant, stdt = mix.mean(dim=(1, 2), keepdim=True), mix.std(dim=(1, 2), keepdim=True)
            xt = (mix - meant) / (1e-5 + stdt)
        x, xt, skips = self._encode(x, xt)
        x, xt = self._bottom(x, xt)
        x, xt = self._decode(x, xt, skips)
        s = len(self.sources)
        x = x.view(b, s, -1, f, t) * std[:, None] + mean[:, None]
        out = self._ispec(self._mask(z, x), length)
        if self.hybrid:
            out = xt.view(b, s, -1, length) * stdt[:, None] + meant[:, None] + out
        return out

    def _encode(self, x: Tensor, xt: Tensor | None) -> tuple[Tensor, Tensor | None, dict]:
        """Run both encoders; the time branch is injected where the bins reach one."""
        skips: dict[str, list] = {"x": [], "xt": [], "len": [], "len_t": []}
        for idx, encode in enumerate(self.encoder):
            skips["len"].append(x.shape[-1])
            inject = None
            if self.hybrid and idx < len(self.tencoder):
                skips["len_t"].append(xt.shape[-1])
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt
                else:
                    skips["xt"].append(xt)
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                bins = torch.arange(x.shape[-2], device=x.device)
                emb = self.freq_emb(bins).t()[None, :, :, None].expand_as(x)
                x = x + self.freq_emb_scale * emb
            skips["x"].append(x)
        return x, xt, skips

    def _decode(self, x: Tensor, xt: Tensor | None, skips: dict) -> tuple[Tensor, Tensor | None]:
        """Run both decoders; the time branch splits off from the merged layer's input."""
        offset = self.depth - len(self.tdecoder) if self.hybrid else self.depth
        for idx, decode in enumerate(self.decoder):
            x, pre = decode(x, skips["x"].pop(-1), skips["len"].pop(-1))
            if idx < offset:
                continue
            tdec = self.tdecoder[idx - offset]
            length_t = skips["len_t"].pop(-1)
            if tdec.empty:
                xt, _ = tdec(pre[:, :, 0], None, length_t)
            else:
                xt, _ = tdec(xt, skips["xt"].pop(-1), length_t)
        return x, xt

    def _bottom(self, x: Tensor, xt: Tensor | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError
