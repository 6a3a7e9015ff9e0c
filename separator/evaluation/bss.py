"""Correlation and Gram-matrix helpers of BSS Eval v4 (see separator.metrics.bss_eval).

The projection filters of BSS Eval solve a least squares system whose Gram matrix is built from
the cross-correlations of the full-length signals at lags 0..filter_length-1. They are computed
here by block FFTs: plain blocks zero-padded by filter_length - 1 (one FFT per channel and
block) for the products inside a block, small FFTs of the boundary samples for the products
that straddle a block boundary; the sums over blocks are real matrix products of the re/im
parts of the spectra, batched over frequency. All arithmetic is float64.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["correlations", "freq_major", "gram_matrix"]

# Block FFT length of the correlations (power of two, > 4 * filter length).
_CORR_NFFT = 8192
# Blocks / boundaries transformed at once: bounds the peak memory.
_CORR_BLOCKS_PER_STEP = 16
_EDGES_PER_STEP = 64


def _block_windows(x: np.ndarray, start: int, count: int, step: int, width: int) -> np.ndarray:
    """(rows, count, width) view of x[:, start + i·step : ... + width], zero past the end."""
    need = (count - 1) * step + width
    seg = x[:, start : start + need]
    if seg.shape[1] < need:  # last blocks: a small zero-padded copy
        seg = np.pad(seg, ((0, 0), (0, need - seg.shape[1])))
    return np.lib.stride_tricks.sliding_window_view(seg, width, axis=-1)[:, ::step]


def freq_major(spec: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """Contiguous transpose of a (rows, blocks, F) spectrum, so that matmul batches over F."""
    return np.ascontiguousarray(spec.transpose(order))


def _real_cross(acc: np.ndarray, xspec: np.ndarray, zspec: np.ndarray | None) -> None:
    """acc += Σ_blocks of the products of the real and imaginary parts of two spectra.

    Args:
        acc: (F, 2X, 2Z) float64 accumulator; rows/columns interleave (re, im) per channel.
        xspec: (X, blocks, F) complex spectra.
        zspec: (Z, blocks, F), or None when the x channels are the first of zspec's (shared).
    A real matmul on the float views: numpy's stacked complex matmul was ~4x slower here.
    """
    zf = freq_major(zspec if zspec is not None else xspec, (2, 1, 0)).view(np.float64)
    if zspec is None:
        xf = zf[..., : acc.shape[1]]
    else:
        xf = freq_major(xspec, (2, 1, 0)).view(np.float64)
    acc += np.matmul(xf.transpose(0, 2, 1), zf)


def _lags_from_real(acc: np.ndarray, nfft: int, length: int) -> np.ndarray:
    """(F, 2X, 2Z) accumulated re/im products -> (X, Z, length) correlations at lags 0..length-1.

    conj(x)·z = (xr·zr + xi·zi) + i(xr·zi - xi·zr).
    """
    spec = np.empty((acc.shape[0], acc.shape[1] // 2, acc.shape[2] // 2), dtype=np.complex128)
    spec.real = acc[:, 0::2, 0::2] + acc[:, 1::2, 1::2]
    spec.imag = acc[:, 0::2, 1::2] - acc[:, 1::2, 0::2]
    return scipy.fft.irfft(spec, n=nfft, axis=0)[:length].transpose(1, 2, 0)


def _edge_correlations(ref: np.ndarray, est: np.ndarray, block: int, length: int) -> np.ndarray:
    """The block-boundary terms of the correlations: x in block b, x shifted by the lag in b + 1.

    Args:
        ref, est: (M, time); block: the block length of the main pass.
    Returns:
        (M, 2M, length): Σ over boundaries p = block, 2·block, ... < time of
        Σ_n ref[a, n] · other[b, n + k] for p - length < n < p <= n + k, other = ref, then est.
    """
    m, edge = ref.shape[0], length - 1
    nfft = 1 << (2 * edge).bit_length()
    bounds = np.arange(block, ref.shape[1], block)
    acc = np.zeros((nfft // 2 + 1, 2 * m, 4 * m))
    xbuf = np.zeros((m, _EDGES_PER_STEP, nfft))  # the last `edge` samples before p, then zeros
    zbuf = np.zeros((2 * m, _EDGES_PER_STEP, nfft))  # `edge` zeros, then the samples from p on
    for i in range(0, len(bounds), _EDGES_PER_STEP):
        p = bounds[i : i + _EDGES_PER_STEP]
        count = len(p)
        xbuf[:, :count, :edge] = _block_windows(ref, p[0] - edge, count, block, edge)
        zbuf[:m, :count, edge : 2 * edge] = _block_windows(ref, p[0], count, block, edge)
        zbuf[m:, :count, edge : 2 * edge] = _block_windows(est, p[0], count, block, edge)
        xs = scipy.fft.rfft(xbuf[:, :count])
        _real_cross(acc, xs, scipy.fft.rfft(zbuf[:, :count]))
    return _lags_from_real(acc, nfft, length)


def correlations(ref: np.ndarray, est: np.ndarray, filter_length: int) -> np.ndarray:
    """Full-length cross-correlations at lags 0..filter_length-1 by block FFTs.

    Plain blocks, zero-padded by filter_length - 1, give every product within a block with a
    single FFT per channel and block; the products that straddle a block boundary come from
    small FFTs of the boundary samples (`_edge_correlations`).

    Args:
        ref, est: (M, time) reference and estimate channels.
    Returns:
        (M, 2M, filter_length): out[a, b, k] = Σ_n ref[a, n] · other[b, n + k] (zero outside the
        signal), other = the reference channels, then the estimate channels.
    """
    m, n = ref.shape
    nfft = max(_CORR_NFFT, 1 << (4 * filter_length - 1).bit_length())
    block = nfft - (filter_length - 1)
    nblocks = -(-n // block)
    acc = np.zeros((nfft // 2 + 1, 2 * m, 4 * m))
    spec = np.empty((nfft // 2 + 1, _CORR_BLOCKS_PER_STEP, 2 * m), dtype=np.complex128)
    for first in range(0, nblocks, _CORR_BLOCKS_PER_STEP):
        count = min(_CORR_BLOCKS_PER_STEP, nblocks - first)
        start = first * block
        zf = spec[:, :count]  # (F, blocks, 2M): rfft zero-pads each block to nfft itself
        for rows, x in ((slice(0, m), ref), (slice(m, 2 * m), est)):
            blocks = scipy.fft.rfft(_block_windows(x, start, count, block, block), n=nfft)
            zf[:, :, rows] = blocks.transpose(2, 1, 0)
        zv = zf.view(np.float64)
        acc += np.matmul(zv[..., : 2 * m].transpose(0, 2, 1), zv)  # see _real_cross
    corr = _lags_from_real(acc, nfft, filter_length)
    if nblocks > 1:
        corr += _edge_correlations(ref, est, block, filter_length)
    return np.ascontiguousarray(corr)


def gram_matrix(corr: np.ndarray) -> np.ndarray:
    """Gram matrix of all delayed reference channels from their correlations.

    Args:
        corr: (M, M, L) reference correlations, corr[a, b, k] = R_ab(k) = Σ_n r_a[n] r_b[n + k].
    Returns:
        (M·L, M·L) with G[(a, t1), (b, t2)] = Σ_n r_a[n - t1] r_b[n - t2] = R_ab(t1 - t2).
    """
    m, _, length = corr.shape
    lags = np.empty((m, m, 2 * length - 1))  # lags[a, b, L - 1 + d] = R_ab(d)
    lags[..., length - 1 :] = corr
    lags[..., : length - 1] = corr.transpose(1, 0, 2)[..., :0:-1]  # R_ab(-k) = R_ba(k)
    # Hankel windows of the reversed lags, flipped: block[t1, t2] = lags[L - 1 + t1 - t2].
    hankel = np.lib.stride_tricks.sliding_window_view(lags[..., ::-1], length, axis=-1)
    toeplitz = hankel[:, :, ::-1, :]  # (M, M, L, L) view
    return np.ascontiguousarray(toeplitz.transpose(0, 2, 1, 3)).reshape(m * length, m * length)
