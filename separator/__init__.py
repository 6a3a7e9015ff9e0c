"""separator: music source separation with BS-RoFormer and Mel-Band RoFormer."""

from separator.errors import SeparatorError

__version__ = "0.1.0"
__all__ = ["SeparatorError", "__version__"]
