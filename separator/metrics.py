"""Separation metrics: global SDR (MDX/SDX), BSS Eval v4 (museval-identical, vectorised), SI-SDR.

Shapes follow the project convention: a source is ``(channels, time)``, a set of sources is
``(sources, channels, time)``. Inputs may be numpy arrays or torch tensors; all arithmetic is
float64 and results come back as numpy float64 arrays.

BSS Eval v4 ("images" mode, time-invariant filters) as museval 0.4.1 computes it
(museval/metrics.py: ``bss_eval(..., framewise_filters=False, bsseval_sources_version=False)``):

* projection filters of ``filter_length`` lags are estimated once from the full-length signals:
  the estimate of stem j, channel c is projected by least squares onto the delayed copies of every
  reference channel (the "all" projection) and onto those of stem j only (the "own" projection);
* the filters are applied to each frame of the references, cut to the frame and zero-padded, so
  the energies include the ``filter_length - 1`` sample tail;
* per frame, with s the reference image, e the estimate, P_own and P_all the projections, summed
  over channels: SDR = |s|²/|e-s|², ISR = |s|²/|P_own-s|², SIR = |P_own|²/|P_all-P_own|²,
  SAR = |P_all|²/|e-P_all|² (in dB; a zero denominator gives +inf);
* a frame in which any reference or estimate source is silent (its channel sum is zero at every
  sample) is NaN for every metric of every source.

Where museval does the same work with full-length FFTs per pair, one LU factorisation per stem and
a Python loop over frames, this module uses block FFT correlations, one Cholesky factorisation and
batched frequency-domain projections (energies by Parseval).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.fft
import torch

from separator.errors import SeparatorError

__all__ = [
    "BssEval",
    "IllConditionedWarning",
    "bss_eval",
    "frame_count",
    "framewise_sdr",
    "sdr",
    "si_sdr",
]

# MDX21/SDX23 challenge definition of the global SDR (sdx23 evaluation code, "eps = 1e-7").
MDX_EPS = 1e-7
# Block length of the FFT correlations used to build the Gram system (power of two, > filter).
_CORR_NFFT = 8192
# Number of correlation blocks / frames transformed at once: bounds the peak memory.
_CORR_BLOCKS_PER_STEP = 96
_FRAMES_PER_STEP = 8
# Below this reciprocal condition estimate the projections lose digits: warn.
_RCOND_WARN = 1e-13


class BssEval(NamedTuple):
    """Framewise BSS Eval v4 metrics in dB, each of shape (sources, frames)."""

    sdr: np.ndarray
    isr: np.ndarray
    sir: np.ndarray
    sar: np.ndarray


class IllConditionedWarning(UserWarning):
    """The projection system is singular or close to it; the ISR/SIR/SAR may be inaccurate."""


def _to_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def sdr(reference: np.ndarray | torch.Tensor, estimate: np.ndarray | torch.Tensor) -> np.ndarray:
    """Global (MDX/SDX) SDR in dB: 10·log10((Σs² + ε) / (Σ(s - ŝ)² + ε)), ε = 1e-7.

    Args:
        reference, estimate: (..., channels, time); sums run over channels and time.
    Returns:
        (...) float64 array of dB values (a 0-d array for a single source).
    """
    ref, est = _to_tensor(reference), _to_tensor(estimate)
    if ref.shape != est.shape:
        raise SeparatorError(f"sdr: reference {tuple(ref.shape)} != estimate {tuple(est.shape)}")
    num = ref.square().sum(dim=(-2, -1)) + MDX_EPS
    den = (ref - est).square().sum(dim=(-2, -1)) + MDX_EPS
    return (10.0 * torch.log10(num / den)).numpy()


def si_sdr(
    reference: np.ndarray | torch.Tensor,
    estimate: np.ndarray | torch.Tensor,
    zero_mean: bool = True,
) -> np.ndarray:
    """Scale-invariant SDR in dB (Le Roux et al., "SDR – half-baked or well done?", ICASSP 2019).

    The reference is scaled by α = <ŝ, s> / |s|² and SI-SDR = 10·log10(|αs|² / |αs - ŝ|²).

    Args:
        reference, estimate: (..., time); each leading index (e.g. channel) is scored apart.
        zero_mean: remove the mean of both signals first, as in the paper.
    Returns:
        (...) float64 array of dB values.
    """
    ref, est = _to_tensor(reference), _to_tensor(estimate)
    if ref.shape != est.shape:
        raise SeparatorError(f"si_sdr: reference {tuple(ref.shape)} != estimate {tuple(est.shape)}")
    if zero_mean:
        ref = ref - ref.mean(dim=-1, keepdim=True)
        est = est - est.mean(dim=-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / ref.square().sum(-1, keepdim=True)
    target = alpha * ref
    return (10.0 * torch.log10(target.square().sum(-1) / (target - est).square().sum(-1))).numpy()


def frame_count(length: int, window: int = 44100, hop: int = 44100) -> int:
    """Number of BSS Eval frames for a signal of `length` samples (museval ``Framing.nwin``).

    The trailing partial window is not framed; a signal no longer than one window is one frame.
    """
    if window < length:
        return (length - window + hop) // hop
    return 1


def _check_sources(
    references: np.ndarray | torch.Tensor, estimates: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    ref, est = _to_tensor(references), _to_tensor(estimates)
    if ref.shape != est.shape:
        raise SeparatorError(
            f"bss_eval: references {tuple(ref.shape)} and estimates {tuple(est.shape)} differ"
        )
    if ref.ndim != 3 or ref.shape[0] == 0 or ref.shape[-1] == 0:
        raise SeparatorError(
            f"bss_eval: expected non-empty (sources, channels, time), got {tuple(ref.shape)}"
        )
    return ref, est


def _frames(x: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """(..., time) -> (..., frames, frame_length) view, museval's framing."""
    n = x.shape[-1]
    if window >= n:
        return x.unsqueeze(-2)
    return x.unfold(-1, window, hop)[..., : frame_count(n, window, hop), :]


def _silent_frames(ref: torch.Tensor, est: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """(frames,) bool: some reference or estimate source has a zero channel sum at every sample.

    museval ``_any_source_silent`` sums over channels (so L = -R counts as silent too).
    """
    silent = torch.zeros(frame_count(ref.shape[-1], window, hop), dtype=torch.bool)
    for x in (ref, est):
        for source in x:  # one source at a time keeps the temporaries small
            silent |= (_frames(source.sum(dim=0), window, hop) == 0).all(dim=-1)
    return silent


def _frame_energy(x: torch.Tensor, window: int, hop: int, minus: torch.Tensor | None = None):
    """(sources, frames) energy of x (or of x - minus) per frame, summed over channels."""
    out = torch.zeros(x.shape[0], frame_count(x.shape[-1], window, hop), dtype=torch.float64)
    for j in range(x.shape[0]):
        for c in range(x.shape[1]):
            sig = x[j, c] if minus is None else x[j, c] - minus[j, c]
            frames = _frames(sig, window, hop)
            out[j] += torch.einsum("tw,tw->t", frames, frames)
    return out


def _safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """10·log10(num/den), +inf where den == 0 (museval ``_safe_db``)."""
    out = 10.0 * torch.log10(num / den)
    return torch.where(den == 0, torch.full_like(out, float("inf")), out)


def framewise_sdr(
    references: np.ndarray | torch.Tensor,
    estimates: np.ndarray | torch.Tensor,
    window: int = 44100,
    hop: int = 44100,
) -> np.ndarray:
    """BSS Eval v4 SDR alone: per frame 10·log10(|s|² / |ŝ - s|²) over all channels.

    Identical to ``bss_eval(...).sdr`` (the v4 SDR needs no projection), at a tiny cost.

    Args:
        references, estimates: (sources, channels, time).
        window, hop: frame length and hop in samples.
    Returns:
        (sources, frames) float64 dB; NaN in frames where any source is silent.
    """
    ref, est = _check_sources(references, estimates)
    silent = _silent_frames(ref, est, window, hop)
    return _sdr_frames(ref, est, silent, window, hop).numpy()


def _sdr_frames(
    ref: torch.Tensor, est: torch.Tensor, silent: torch.Tensor, window: int, hop: int
) -> torch.Tensor:
    out = _safe_db(_frame_energy(ref, window, hop), _frame_energy(est, window, hop, minus=ref))
    out[:, silent] = float("nan")
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run thousands of tiny batched matmuls on one thread.

    Measured on the 2-core dev machine while other jobs ran: the (F, 8, 96) @ (F, 96, 16)
    complex bmm of the correlations took 98-288 s with 2 intra-op threads (threads spinning at
    barriers on an oversubscribed CPU) and a steady 5.4 s with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _correlations(
    ref: torch.Tensor, others: tuple[torch.Tensor, ...], filter_length: int
) -> torch.Tensor:
    """Full-length cross-correlations at lags 0..filter_length-1 by block FFTs.

    Args:
        ref: (M, time) reference channels; others: (K_i, time) signals to correlate with.
    Returns:
        (M, ΣK_i, filter_length), out[a, b, k] = Σ_n ref[a, n] · other[b, n + k] (zero outside).
    """
    nfft = max(_CORR_NFFT, 1 << (4 * filter_length - 1).bit_length())
    block = nfft - (filter_length - 1)
    n = ref.shape[-1]
    step = block * _CORR_BLOCKS_PER_STEP
    k = sum(o.shape[0] for o in others)
    spec = torch.zeros(nfft // 2 + 1, ref.shape[0], k, dtype=torch.complex128)
    for start in range(0, n, step):
        # Slices of the inputs, padded per step: no full-length copies.
        stop = min(start + step, n)
        nblocks = -(-(stop - start) // block)
        x = _pad_to(ref[:, start:stop], nblocks * block).view(ref.shape[0], nblocks, block)
        ys = [
            _pad_to(
                o[:, start : stop + filter_length - 1], nblocks * block + filter_length - 1
            ).unfold(-1, nfft, block)  # each block plus the next filter_length - 1 samples
            for o in others
        ]
        xf = torch.fft.rfft(x, n=nfft).permute(2, 0, 1)  # (F, M, blocks)
        yf = torch.fft.rfft(torch.cat(ys), n=nfft).permute(2, 1, 0)  # (F, blocks, K)
        # Summing the cross-spectra over blocks sums the block correlations.
        spec += torch.matmul(xf.conj(), yf)
    return torch.fft.irfft(spec, n=nfft, dim=0)[:filter_length].permute(1, 2, 0).contiguous()


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def _gram(corr: torch.Tensor) -> torch.Tensor:
    """Gram matrix of all delayed reference channels from their correlations.

    Args:
        corr: (M, M, L) reference correlations, corr[a, b, k] = Σ_n r_a[n] r_b[n + k].
    Returns:
        (M·L, M·L) with G[(a, t1), (b, t2)] = Σ_n r_a[n - t1] r_b[n - t2] = R_ab(t1 - t2).
    """
    m, _, length = corr.shape
    lag = torch.arange(length)
    diff = lag[:, None] - lag[None, :]
    pos, neg = diff.clamp(min=0), (-diff).clamp(min=0)
    upper = diff >= 0
    # Filled block by block: full (M, M, L, L) temporaries would triple the peak memory.
    gram = torch.empty(m, length, m, length, dtype=corr.dtype)
    for a in range(m):
        for b in range(m):
            gram[a, :, b] = torch.where(
                upper, corr[a, b][pos], corr[b, a][neg]
            )  # R_ab(-k) = R_ba(k)
    return gram.view(m * length, m * length)


def _solve_spd(gram: torch.Tensor, rhs: torch.Tensor, what: str) -> torch.Tensor:
    """Solve gram @ x = rhs for symmetric positive (semi-)definite gram, batched.

    One Cholesky factorisation serves every right-hand side. If it fails (a singular system,
    e.g. stems whose left and right channels are identical), fall back on LU with partial
    pivoting, as museval does for every system. The spurious components that LU puts in exact
    null directions cancel in every frame (identical channels stay identical when cut), while a
    truncating pseudo-inverse would also drop tiny but real directions of band-limited audio
    and move ISR/SIR/SAR by dB. museval's own last resort (lstsq through
    ``np.linalg.linalg.LinAlgError``) crashes on numpy 2, which removed that module.
    """
    factor, info = torch.linalg.cholesky_ex(gram)
    if bool((info != 0).any()):
        warnings.warn(
            f"bss_eval: the {what} projection system is singular (identical channels?); "
            "solving it by LU",
            IllConditionedWarning,
            stacklevel=3,
        )
        solution, info = torch.linalg.solve_ex(gram, rhs)
        if bool((info != 0).any()):
            solution = torch.linalg.lstsq(gram, rhs, driver="gelsd").solution
        return solution
    diag = factor.diagonal(dim1=-2, dim2=-1)
    rcond = (diag.min(-1).values / diag.max(-1).values).square()
    if bool((rcond < _RCOND_WARN).any()):
        warnings.warn(
            f"bss_eval: the {what} projection system is ill-conditioned "
            f"(reciprocal condition ~{float(rcond.min()):.1e}); ISR/SIR/SAR may be inaccurate",
            IllConditionedWarning,
            stacklevel=3,
        )
    return torch.cholesky_solve(rhs, factor)


def _redundant_channels(ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference channels whose delayed copies add nothing to the projection subspace.

    A channel that is zero everywhere, or identical to an earlier channel (a mono stem stored as
    stereo), spans nothing new, in the full signal and in every frame alike. Leaving it in makes
    the system exactly singular, where LU meets a zero pivot (museval then crashes: its fallback
    goes through ``np.linalg.linalg``, which numpy 2 removed).

    Args:
        ref: (sources, channels, time).
    Returns:
        (sources, channels) bool masks for the all-stem system and for each own-stem system.
    """
    nsrc, nchan, _ = ref.shape
    flat = ref.reshape(nsrc * nchan, -1)
    dead_all = torch.zeros(nsrc * nchan, dtype=torch.bool)
    dead_own = torch.zeros(nsrc * nchan, dtype=torch.bool)
    for b in range(nsrc * nchan):
        if not bool(flat[b].any()):
            dead_all[b] = dead_own[b] = True
            continue
        for a in range(b):
            if torch.equal(flat[a], flat[b]):
                dead_all[b] = True
                dead_own[b] |= a // nchan == b // nchan
    return dead_all.view(nsrc, nchan), dead_own.view(nsrc, nchan)


def _pin(gram: torch.Tensor, rhs: torch.Tensor, rows: torch.Tensor) -> None:
    """Decouple `rows` of the system gram @ x = rhs in place so that they solve to zero."""
    if bool(rows.any()):
        gram[rows, :] = 0.0
        gram[:, rows] = 0.0
        gram.diagonal()[rows] = 1.0
        rhs[rows] = 0.0


def _projection_filters(
    ref: torch.Tensor, est: torch.Tensor, filter_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares projection filters from the full-length signals.

    Args:
        ref, est: (sources, channels, time).
    Returns:
        all_filters (M, L, M): all_filters[a, t, e] weights reference channel a delayed by t in
            the projection of estimate channel e onto every reference (M = sources·channels).
        own_filters (sources, C, L, C): [j, ca, t, ce] the same onto stem j's channels only.
    """
    nsrc, nchan, n = ref.shape
    m, length = nsrc * nchan, filter_length
    ref2, est2 = ref.reshape(m, n), est.reshape(m, n)
    with _one_thread():
        corr = _correlations(ref2, (ref2, est2), filter_length)
    gram = _gram(corr[:, :m])
    rhs = corr[:, m:].permute(0, 2, 1).reshape(m * length, m).clone()  # D[(a,t), e] = R_ae(t)
    cl = nchan * length
    own_gram = torch.stack([gram.view(nsrc, cl, nsrc, cl)[j, :, j] for j in range(nsrc)])
    own_rhs = torch.stack([rhs.view(nsrc, cl, nsrc, nchan)[j, :, j] for j in range(nsrc)])
    dead_all, dead_own = _redundant_channels(ref)
    _pin(gram, rhs, dead_all.reshape(m).repeat_interleave(length))
    for j in range(nsrc):
        _pin(own_gram[j], own_rhs[j], dead_own[j].repeat_interleave(length))
    all_filters = _solve_spd(gram, rhs, "all-stem").view(m, length, m)
    if nsrc == 1:
        own = all_filters.view(1, cl, nchan)  # same system: museval gets identical filters
    else:
        own = _solve_spd(own_gram, own_rhs, "own-stem")
    return all_filters, own.view(nsrc, nchan, length, nchan)


def _parseval_weight(nfft: int) -> torch.Tensor:
    """Weights w with Σ_n x[n]² = Σ_f w[f]·|rfft(x, nfft)[f]|² (one-sided spectrum)."""
    weight = torch.full((nfft // 2 + 1,), 2.0 / nfft, dtype=torch.float64)
    weight[0] = 1.0 / nfft
    if nfft % 2 == 0:
        weight[-1] = 1.0 / nfft
    return weight


def _projection_energies(
    ref: torch.Tensor,
    est: torch.Tensor,
    filters: tuple[torch.Tensor, torch.Tensor],
    window: int,
    hop: int,
) -> dict[str, torch.Tensor]:
    """Per-frame energies of the projections, each (sources, frames), summed over channels.

    Each frame of the references is cut out, zero-padded and filtered (one FFT per channel and
    frame, the filtering as a matrix product per frequency), so energies cover frame + L - 1.
    """
    all_filters, own_filters = filters
    nsrc, nchan, _ = ref.shape
    m, length = nsrc * nchan, all_filters.shape[1]
    ref_frames = _frames(ref.reshape(m, -1), window, hop)  # (M, frames, W)
    est_frames = _frames(est.reshape(m, -1), window, hop)
    nfft = scipy.fft.next_fast_len(ref_frames.shape[-1] + length - 1, real=True)
    # Frequency-major layouts so that the filtering is one batched matmul per step.
    all_f = torch.fft.rfft(all_filters, n=nfft, dim=1).permute(1, 2, 0).contiguous()  # (F, e, a)
    own_f = torch.fft.rfft(own_filters, n=nfft, dim=2)  # (sources, ca, F, ce)
    own_f = own_f.permute(0, 2, 3, 1).contiguous()  # (sources, F, ce, ca)
    weight = _parseval_weight(nfft)
    names = ("own", "all", "own_minus_ref", "all_minus_own", "est_minus_all")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    for i in range(0, ref_frames.shape[1], _FRAMES_PER_STEP):
        sl = slice(i, i + _FRAMES_PER_STEP)
        r = torch.fft.rfft(ref_frames[:, sl], n=nfft).permute(2, 0, 1).contiguous()  # (F, M, T)
        e = torch.fft.rfft(est_frames[:, sl], n=nfft).permute(2, 0, 1)
        p_all = torch.matmul(all_f, r)  # (F, M, T)
        r_src = r.view(-1, nsrc, nchan, r.shape[-1]).transpose(0, 1)  # (sources, F, C, T)
        p_own = torch.matmul(own_f, r_src).transpose(0, 1).reshape(p_all.shape)
        specs = (p_own, p_all, p_own - r, p_all - p_own, e - p_all)
        for name, spec in zip(names, specs):
            power = spec.real.square() + spec.imag.square()  # (F, M, T)
            energy = torch.tensordot(weight, power, dims=1)  # (M, T), Parseval
            parts[name].append(energy.view(nsrc, nchan, -1).sum(1))
    return {k: torch.cat(v, dim=-1) for k, v in parts.items()}


def bss_eval(
    references: np.ndarray | torch.Tensor,
    estimates: np.ndarray | torch.Tensor,
    window: int = 44100,
    hop: int = 44100,
    filter_length: int = 512,
) -> BssEval:
    """BSS Eval v4 (images, time-invariant filters), equal to museval 0.4.1 ``evaluate``.

    Args:
        references, estimates: (sources, channels, time), same shape; at least one source.
        window, hop: frame length and hop in samples (museval's MUSDB setting: 1 s at 44.1 kHz).
        filter_length: projection filter length in samples.
    Returns:
        BssEval(sdr, isr, sir, sar), each (sources, frames) float64 in dB, with
        frames = frame_count(time, window, hop). Frames in which any source is silent are NaN.
        A source silent over the whole signal (museval raises ValueError) makes every frame NaN.
    """
    ref, est = _check_sources(references, estimates)
    nsrc = ref.shape[0]
    silent = _silent_frames(ref, est, window, hop)
    sdr_db = _sdr_frames(ref, est, silent, window, hop)
    nan = torch.full_like(sdr_db, float("nan"))
    if bool(silent.all()):
        return BssEval(*(t.numpy() for t in (sdr_db, nan, nan.clone(), nan.clone())))
    filters = _projection_filters(ref, est, filter_length)
    with _one_thread():
        energy = _projection_energies(ref, est, filters, window, hop)
    ref_energy = _frame_energy(ref, window, hop)
    isr = _safe_db(ref_energy, energy["own_minus_ref"])
    sir = _safe_db(energy["own"], energy["all_minus_own"])
    if nsrc == 1:  # museval's two projections coincide exactly: no interference at all
        sir = torch.full_like(sir, float("inf"))
    sar = _safe_db(energy["all"], energy["est_minus_all"])
    for metric in (isr, sir, sar):
        metric[:, silent] = float("nan")
    return BssEval(sdr_db.numpy(), isr.numpy(), sir.numpy(), sar.numpy())
