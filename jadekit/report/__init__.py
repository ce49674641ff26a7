"""Run reports: training curves, Fig. 2, reconstructions, swaps, probes and PCA (Markdown + PNG + HTML)."""

from jadekit.report.build import Report, build_report

__all__ = ["Report", "build_report"]
