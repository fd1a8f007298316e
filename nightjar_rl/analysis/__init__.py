"""Plots (DataFrame -> matplotlib Figure) and summary tables of experiment results."""

from nightjar_rl.analysis.plots import plot_k_by_batch, plot_metric_vs_rate
from nightjar_rl.analysis.tables import format_summary, summary_table

__all__ = ["format_summary", "plot_k_by_batch", "plot_metric_vs_rate", "summary_table"]
