"""results.json -> report.md and accuracy_matrix.png; comparisons -> comparison.md/.json/.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.io import atomic_path, write_json, write_text

METRIC_KEYS = ("mft", "mfn", "maa", "bwt", "fwt", "forgetting")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def matrix_markdown(res: dict[str, Any]) -> str:
    tasks = res["tasks"]
    rows = [["zero-shot", *res["zero_shot"]]]
    rows += [[f"after {tasks[k]}", *row] for k, row in enumerate(res["accuracy_matrix"])]
    return _table(["", *tasks], rows)


def write_report(out: Path, res: dict[str, Any]) -> None:
    m = res["metrics"]
    counts = res["counts"]
    parts = [
        f"# {res['method']} on {res['benchmark']} (seed {res['seed']})",
        "",
        res.get("note", ""),
        "",
        "## Accuracy matrix (row: after training on that task; 0-100)",
        "",
        matrix_markdown(res),
        "",
        "## Continual metrics",
        "",
        _table(
            [k.upper() if k != "forgetting" else "Forgetting" for k in METRIC_KEYS],
            [[m[k] for k in METRIC_KEYS]],
        ),
        "",
        "## Samples scored",
        "",
        _table(
            ["task", "metric", "scored", "total"],
            [
                [t, res["task_metric"][t], counts[t]["scored"], counts[t]["total"]]
                for t in res["tasks"]
            ],
        ),
        "",
    ]
    if "routing" in res:
        parts += [
            "## Routing accuracy (%, last step)",
            "",
            _table(res["tasks"], [res["routing"]["accuracy"]]),
            "",
        ]
    t = res["timing"]
    parts += [
        "## Timing",
        "",
        f"train {t['train_s']:.1f} s ({t['train_samples_per_s']:.1f} "
        f"samples/s), evaluation {t['eval_s']:.1f} s",
        "",
    ]
    write_text(out / "report.md", "\n".join(parts))
    plot_matrix(res, out / "accuracy_matrix.png")


def plot_matrix(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = res["tasks"]
    data = [res["zero_shot"], *res["accuracy_matrix"]]
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2, 0.8 * len(data) + 1.5))
    im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(data)), ["zero-shot", *[f"after {t}" for t in tasks]])
    for r, row in enumerate(data):
        for c, v in enumerate(row):
            ax.text(
                c,
                r,
                f"{v:.0f}",
                ha="center",
                va="center",
                color="white" if v < 60 else "black",
                fontsize=9,
            )
    ax.set_title(f"{res['method']} on {res['benchmark']}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def comparison_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        rows.append(
            {
                "method": r["method"],
                **{k: r["metrics"][k] for k in METRIC_KEYS},
                "final": dict(zip(r["tasks"], r["accuracy_matrix"][-1], strict=True)),
                "train_s": r["timing"]["train_s"],
                "eval_s": r["timing"]["eval_s"],
                "upper_bound": r.get("upper_bound", False),
                **({"routing": r["routing"]["accuracy"]} if "routing" in r else {}),
            }
        )
    return rows


def comparison_markdown(benchmark: str, results: list[dict[str, Any]]) -> str:
    rows = comparison_rows(results)
    tasks = results[0]["tasks"]
    table = _table(
        ["method", "MFT", "MFN", "MAA", "BWT", "FWT", "Forget.", *tasks, "train s", "eval s"],
        [
            [
                r["method"] + (" (upper bound)" if r["upper_bound"] else ""),
                *[r[k] for k in METRIC_KEYS],
                *[r["final"][t] for t in tasks],
                r["train_s"],
                r["eval_s"],
            ]
            for r in rows
        ],
    )
    return (
        f"# Comparison on {benchmark}\n\nSame stream, task order ({' -> '.join(tasks)}) and "
        f"seed for every method. Per-task columns are final scores (after the last task)."
        f"\n\n{table}\n"
    )


def write_comparison(out: Path, benchmark: str, results: list[dict[str, Any]]) -> str:
    text = comparison_markdown(benchmark, results)
    write_text(out / "comparison.md", text)
    write_json(
        out / "comparison.json",
        {"benchmark": benchmark, "tasks": results[0]["tasks"], "methods": comparison_rows(results)},
    )
    plot_comparison(results, out / "comparison.png")
    return text


def plot_comparison(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results[0]["tasks"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(results)
    for j, r in enumerate(results):
        final = r["accuracy_matrix"][-1]
        ax1.bar([i + j * width for i in range(len(tasks))], final, width, label=r["method"])
        avg = [sum(row[: k + 1]) / (k + 1) for k, row in enumerate(r["accuracy_matrix"])]
        ax2.plot(range(1, len(tasks) + 1), avg, marker="o", label=r["method"])
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks)
    ax1.set_ylabel("final score")
    ax1.set_ylim(0, 100)
    ax1.set_title("final score per task")
    ax2.set_xticks(range(1, len(tasks) + 1), [f"after {t}" for t in tasks], rotation=20)
    ax2.set_ylabel("average over seen tasks")
    ax2.set_ylim(0, 100)
    ax2.set_title("average accuracy over steps")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
