"""Reports on simulation results: matplotlib figures and Markdown/HTML rendering (`axonsim report`)."""

from axonsim.report.load import ReportError, load_results
from axonsim.report.plots import (
    plot_channel_share,
    plot_latency_cdf,
    plot_metric,
    plot_retry_amplification,
    share_over_time,
)
from axonsim.report.render import render_report

__all__ = ["ReportError", "load_results", "plot_channel_share", "plot_latency_cdf", "plot_metric",
           "plot_retry_amplification", "render_report", "share_over_time"]
