"""Plots (DataFrame -> matplotlib Figure), summary tables and confidence intervals of experiment results."""

from nightjar_rl.analysis.load import load_axis
from nightjar_rl.analysis.plots import plot_k_by_batch, plot_metric_vs_rate
from nightjar_rl.analysis.stats import ci_table, format_ci, t_interval
from nightjar_rl.analysis.tables import format_summary, summary_table

__all__ = ["ci_table", "format_ci", "format_summary", "load_axis", "plot_k_by_batch", "plot_metric_vs_rate",
           "summary_table", "t_interval"]
