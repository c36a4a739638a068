"""A grid's comparison: comparison.md, .json, .html (self-contained) and .png (error bars)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.grid.cells import LOG_FILE, Cell
from mmcl.grid.stats import BOOTSTRAP_SAMPLES, MIN_CELLS_TO_ESTABLISH, aggregate
from mmcl.io import atomic_path, write_json, write_text
from mmcl.report import METRIC_KEYS, markdown_table
from mmcl.report.html import CSS, data_uri, esc

LABELS = {k: k.upper() for k in METRIC_KEYS} | {"forgetting": "Forget."}


def mean_std(s: dict[str, Any]) -> str:
    """`mean ± std`, or the mean alone for one value."""
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def interval(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"[{lo:.2f}, {hi:.2f}]"


def difference(d: dict[str, Any]) -> str:
    """A paired difference: mean, interval, wins; `not established` when the interval holds 0."""
    text = f"{d['mean']:+.2f} {interval(d)} {d['wins']}/{d['n']}"
    return text if d["established"] else f"{text} not established"


def grid_tables(agg: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The comparison's tables as (title, header, rows): one source for markdown and HTML."""
    methods, tasks = agg["methods"], agg["tasks"]

    def name(m: str) -> str:
        return m + (" (upper bound)" if methods[m]["upper_bound"] else "")

    keys = list(METRIC_KEYS)
    tables = [
        (
            "Continual metrics (mean ± std over cells)",
            ["method", "n", *[LABELS[k] for k in keys]],
            [
                [name(m), str(s["n"]), *[mean_std(s["metrics"][k]) for k in keys]]
                for m, s in methods.items()
            ],
        ),
        (
            "95% intervals of the mean (bootstrap over cells)",
            ["method", *[LABELS[k] for k in keys]],
            [[name(m), *[interval(s["metrics"][k]) for k in keys]] for m, s in methods.items()],
        ),
    ]
    paired = {m: p for m, p in agg["paired"].items() if p}
    if paired:
        tables.append(
            (
                f"Paired differences against {agg['reference']} (same seed and order): "
                "mean difference, 95% interval, cells won",
                ["method", "n", *[LABELS[k] for k in keys]],
                [
                    [m, str(p["n"]), *[difference(p["metrics"][k]) for k in keys]]
                    for m, p in paired.items()
                ],
            )
        )
    for kind, what in (
        ("final", "after the last task"),
        ("learned", "right after learning it"),
        ("routing", "routing accuracy after the last task, %"),
    ):
        rows = [
            [name(m), *[mean_std(s["tasks"][t][kind]) for t in tasks]]
            for m, s in methods.items()
            if kind in s["tasks"][tasks[0]]
        ]
        if rows:
            title = f"Per task: {what} (mean ± std, aligned by task name)"
            tables.append((title, ["method", *tasks], rows))
    other = sorted({k for s in methods.values() for k in s["other_scores"]})
    if other:
        tables.append(
            (
                "Other scores after the last task (mean over tasks; mean ± std over cells)",
                ["method", *other],
                [
                    [
                        name(m),
                        *[
                            mean_std(s["other_scores"][k]) if k in s["other_scores"] else ""
                            for k in other
                        ],
                    ]
                    for m, s in methods.items()
                ],
            )
        )
    retained = [
        [name(m), mean_std(s["general_retention"])]
        for m, s in methods.items()
        if s["general_retention"]
    ]
    if retained:
        tables.append(
            ("General retention after the last task (%)", ["method", "retention"], retained)
        )
    tables.append(
        (
            "Training time per cell (s)",
            ["method", "train s"],
            [[name(m), mean_std(s["train_s"])] for m, s in methods.items()],
        )
    )
    return tables


def _intro(agg: dict[str, Any], benchmark: str, orders: list[list[str]], seeds: list[int]) -> str:
    n_methods = len(agg["methods"])
    return (
        f"{n_methods} methods x {len(seeds)} seeds ({', '.join(map(str, seeds))}) x "
        f"{len(orders)} task orders on {benchmark}. A cell is one run (a seed and an order); "
        "matrices of different orders are aligned by task name. Intervals: percentile "
        f"bootstrap of the mean over cells ({BOOTSTRAP_SAMPLES:,} resamples); with few cells "
        "they are narrow, so read them with n. A difference whose interval contains 0, or "
        f"that fewer than {MIN_CELLS_TO_ESTABLISH} paired cells show, is not established; "
        "BWT, FWT and the scores are better higher, forgetting lower."
    )


def _orders_text(orders: list[list[str]]) -> list[str]:
    return [f"{k + 1}. {' -> '.join(o)}" for k, o in enumerate(orders)]


def _failed_text(failed: list[tuple[Cell, str]]) -> list[str]:
    return [f"- {c.name}: {err} (log: {c.folder / LOG_FILE})" for c, err in failed]


def grid_markdown(
    agg: dict[str, Any],
    benchmark: str,
    orders: list[list[str]],
    seeds: list[int],
    failed: list[tuple[Cell, str]],
) -> str:
    parts = [f"# Comparison on {benchmark}", "", _intro(agg, benchmark, orders, seeds), ""]
    parts += ["Task orders:", "", *_orders_text(orders), ""]
    for title, header, rows in grid_tables(agg):
        parts += [f"## {title}", "", markdown_table(header, rows), ""]
    if failed:
        parts += ["## Failed cells (run the command again to retry them)", ""]
        parts += [*_failed_text(failed), ""]
    return "\n".join(parts)


def grid_html(agg: dict[str, Any], md_intro: str, orders, failed, png: bytes, title: str) -> str:
    """comparison.html: the same tables and the plot, viewable offline."""

    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="note">{esc(v)}</td>'
                if "not established" in v
                else f"<td>{esc(v)}</td>"
                for v in r
            )
            + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    body = [f"<h1>{esc(title)}</h1>", f'<p class="note">{esc(md_intro)}</p>', "<ol>"]
    body += [f"<li>{esc(' -> '.join(o))}</li>" for o in orders] + ["</ol>"]
    for heading, header, rows in grid_tables(agg):
        body += [f"<h2>{esc(heading)}</h2>", table(header, rows)]
    body += [
        "<h2>Plot</h2>",
        f'<img alt="comparison with 95% intervals" src="{data_uri(png, "image/png")}">',
    ]
    if failed:
        body += ["<h2>Failed cells</h2>", "<ul>"]
        body += [f"<li>{esc(line[2:])}</li>" for line in _failed_text(failed)] + ["</ul>"]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
        f"</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def plot_grid(agg: dict[str, Any], path: Path) -> bytes:
    """Bars of the metrics and of the final score per task, each with its 95% interval."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, tasks = agg["methods"], agg["tasks"]
    keys = list(METRIC_KEYS)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(methods)
    for j, (m, s) in enumerate(methods.items()):
        for ax, stats in (
            (ax1, [s["metrics"][k] for k in keys]),
            (ax2, [s["tasks"][t]["final"] for t in tasks]),
        ):
            means = [x["mean"] for x in stats]
            err = [
                [x["mean"] - x["ci95"][0] for x in stats],
                [x["ci95"][1] - x["mean"] for x in stats],
            ]
            xs = [i + j * width for i in range(len(stats))]
            ax.bar(xs, means, width, yerr=err, capsize=3, label=f"{m} (n={s['n']})")
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [LABELS[k] for k in keys])
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_title("continual metrics (bars: 95% interval of the mean)")
    ax1.legend(fontsize=8)
    ax2.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=20)
    ax2.set_ylim(0, 100)
    ax2.set_title("final score per task")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return buf.getvalue()


def write_grid_comparison(
    out: Path,
    results: list[dict[str, Any]],
    orders: list[list[str]],
    reference: str | None,
    failed: list[tuple[Cell, str]],
) -> str:
    """Aggregate the finished cells' results; write comparison.md/.json/.html/.png; return
    the markdown."""
    agg = aggregate(results, orders[0], reference)
    benchmark = results[0]["benchmark"]
    seeds = sorted({r["seed"] for r in results})
    text = grid_markdown(agg, benchmark, orders, seeds, failed)
    cells = [
        {"method": r["method"], "seed": r["seed"], "tasks": r["tasks"], "metrics": r["metrics"]}
        for r in results
    ]
    failures = [{"cell": c.name, "error": e, "log": str(c.folder / LOG_FILE)} for c, e in failed]
    write_json(
        out / "comparison.json",
        {
            "benchmark": benchmark,
            "seeds": seeds,
            "orders": orders,
            **agg,
            "cells": cells,
            "failed": failures,
        },
    )
    png = plot_grid(agg, out / "comparison.png")
    intro = _intro(agg, benchmark, orders, seeds)
    html = grid_html(agg, intro, orders, failed, png, f"Comparison on {benchmark}")
    write_text(out / "comparison.html", html)
    write_text(out / "comparison.md", text)
    return text
