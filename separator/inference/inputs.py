"""What the Python API takes as audio: torch tensors or numpy arrays, float or integer PCM, and a
sample rate in whole Hz. One place, so `Separator.separate_tensor` and the engine's
`separate_tensor` accept and refuse the same things.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from separator.errors import SeparatorError

# Integer PCM -> float as soundfile (libsndfile) reads it: divide by 2^(bits - 1), so full scale
# is [-1, 1); unsigned 8-bit (WAV's 8-bit format) is centred on 128 first.
PCM_SCALES = {
    torch.int8: (0, 2.0**7),
    torch.uint8: (128, 2.0**7),
    torch.int16: (0, 2.0**15),
    torch.int32: (0, 2.0**31),
}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACCEPTED = "float (any precision) or integer PCM (int8, uint8, int16, int32)"


def as_waveform(wav: object, what: str = "wav") -> Tensor:
    """`wav` (a tensor or numpy array) as a float32 CPU tensor of the same shape.

    Floats are taken as they are; integer PCM is scaled to [-1, 1) as soundfile does
    (int16 / 32768, int32 / 2^31, int8 / 128, (uint8 - 128) / 128). Other types and dtypes
    (int64, bool, complex, lists) and NaN/inf samples raise `SeparatorError`.
    """
    if isinstance(wav, np.ndarray):
        if wav.dtype.kind not in "fiu" or wav.dtype.itemsize > 8:
            raise SeparatorError(f"`{what}`: dtype {wav.dtype} is not audio; use {ACCEPTED}")
        try:
            wav = torch.from_numpy(np.ascontiguousarray(wav))
        except TypeError:  # a dtype torch has no tensor type for (e.g. float128)
            raise SeparatorError(
                f"`{what}`: dtype {wav.dtype} is not audio; use {ACCEPTED}"
            ) from None
    elif not isinstance(wav, Tensor):
        raise SeparatorError(
            f"`{what}` must be a torch tensor or a numpy array, got {type(wav).__name__}"
        )
    x = wav.detach().cpu()
    if x.dtype in PCM_SCALES:
        offset, scale = PCM_SCALES[x.dtype]
        # int32 -> float32 rounds once; the offset and the power-of-two scale are exact.
        return (x.float() - offset) / scale if offset else x.float() / scale
    if x.dtype not in FLOAT_DTYPES:
        dtype = str(x.dtype).removeprefix("torch.")
        raise SeparatorError(f"`{what}`: dtype {dtype} is not audio; use {ACCEPTED}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise SeparatorError(f"`{what}` contains NaN or infinite samples")
    return x


def check_sample_rate(sample_rate: object) -> int:
    """`sample_rate` as an int: a positive whole number of Hz (44100 or 44100.0, not 44100.5)."""
    whole = isinstance(sample_rate, numbers.Integral) or (
        isinstance(sample_rate, numbers.Real) and float(sample_rate).is_integer()
    )
    if isinstance(sample_rate, bool) or not whole or sample_rate <= 0:  # type: ignore[operator]
        raise SeparatorError(
            f"`sample_rate` must be a positive whole number of Hz, got {sample_rate!r}"
        )
    return int(sample_rate)  # type: ignore[call-overload]
