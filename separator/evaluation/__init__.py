"""Evaluation: metrics (global SDR, BSS Eval v4 equal to museval, SI-SDR), the MUSDB18 runner, and
the reports it writes (museval JSON, summary tables, box plots)."""

from separator.evaluation.metrics import BssEval, bss_eval, framewise_sdr, sdr, si_sdr
from separator.evaluation.runner import Report, evaluate_dataset

__all__ = ["BssEval", "Report", "bss_eval", "evaluate_dataset", "framewise_sdr", "sdr", "si_sdr"]
