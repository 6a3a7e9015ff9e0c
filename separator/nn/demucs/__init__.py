"""The Demucs family (demucs 4.1.0): waveform `Demucs` (v2/v3), `HDemucs` (v3, hybrid),
`HTDemucs` (v4, hybrid transformer) and `DemucsBag` (demucs's BagOfModels).

Modules take demucs's constructor arguments and keep its state-dict keys (and their order), so
demucs checkpoints load with `strict=True`; forward is (batch, channels, time) ->
(batch, sources, channels, time), equal to demucs's at 1e-5. `FAMILY` ("demucs", .th packages)
and `MSST_FAMILY` ("htdemucs", MSST-trained state dicts) are their registry records.
"""

from separator.nn.demucs.demucs_v2 import Demucs
from separator.nn.demucs.family import (
    FAMILIES,
    FAMILY,
    KLASSES,
    MSST_FAMILY,
    DemucsBag,
    build,
    build_model,
    from_msst,
    klass_name,
    make_model,
    msst_match,
    parse_segment,
    training_length,
)
from separator.nn.demucs.hdemucs import HDemucs
from separator.nn.demucs.htdemucs import HTDemucs

__all__ = [
    "FAMILIES",
    "FAMILY",
    "KLASSES",
    "MSST_FAMILY",
    "Demucs",
    "DemucsBag",
    "HDemucs",
    "HTDemucs",
    "build",
    "build_model",
    "from_msst",
    "klass_name",
    "make_model",
    "msst_match",
    "parse_segment",
    "training_length",
]
