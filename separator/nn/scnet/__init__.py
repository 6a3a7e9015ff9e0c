"""SCNet (MSST `scnet`, `scnet_masked`, `scnet_tran`): one encoder/decoder, three variants.

`config` holds the MSST `model:` fields, `blocks` the SD/SU encoder and decoder blocks,
`separation` the dual-path separation nets (BiLSTM or RoPE transformer), `model` the three
modules and their family records.
"""

from separator.nn.scnet.config import SCNetConfig, SCNetTranConfig
from separator.nn.scnet.model import (
    SCNET,
    SCNET_MASKED,
    SCNET_TRAN,
    SCNet,
    SCNetMasked,
    SCNetTran,
)

__all__ = [
    "SCNET",
    "SCNET_MASKED",
    "SCNET_TRAN",
    "SCNet",
    "SCNetConfig",
    "SCNetMasked",
    "SCNetTran",
    "SCNetTranConfig",
]
