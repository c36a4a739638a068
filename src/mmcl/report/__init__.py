"""Reports: results.json -> report.md, accuracy_matrix.png and a self-contained report.html;
comparisons of runs -> comparison.md/.json/.png. One job per file: markdown, plots, html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.io import write_json, write_text
from mmcl.report.html import write_html
from mmcl.report.markdown import (
    METRIC_KEYS,
    comparison_markdown,
    comparison_rows,
    final_extras,
    markdown_table,
    matrix_markdown,
    mean_over_tasks,
    report_markdown,
)
from mmcl.report.plots import plot_comparison, plot_matrix, plot_retention

__all__ = [
    "METRIC_KEYS",
    "comparison_markdown",
    "final_extras",
    "matrix_markdown",
    "mean_over_tasks",
    "markdown_table",
    "write_comparison",
    "write_report",
]


def write_report(out: Path, res: dict[str, Any]) -> None:
    """Every report of one run into `out`."""
    write_text(out / "report.md", report_markdown(res))
    plot_matrix(res, out / "accuracy_matrix.png")
    if "general" in res:
        plot_retention(res, out / "general_retention.png")
    write_html(out, res)


def write_comparison(out: Path, benchmark: str, results: list[dict[str, Any]]) -> str:
    """A comparison of runs on one benchmark into `out`; returns its markdown."""
    text = comparison_markdown(benchmark, results)
    write_text(out / "comparison.md", text)
    write_json(
        out / "comparison.json",
        {"benchmark": benchmark, "tasks": results[0]["tasks"], "methods": comparison_rows(results)},
    )
    plot_comparison(results, out / "comparison.png")
    return text
