"""The figures of reports: one run's accuracy matrix, a comparison of methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.io import atomic_path


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


# --- report.html: one self-contained page (inline CSS, media as data: URIs, no scripts) -------


def plot_retention(res: dict[str, Any], path: Path) -> None:
    """general_retention.png: each benchmark's retention over the steps, and their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen, tasks = res["general"], res["tasks"]
    x = list(range(len(tasks) + 1))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(x)), 3.8))
    curves = [(n, b["retention"]) for n, b in gen["benchmarks"].items()]
    for name, ret in [*curves, ("mean", gen["retention"])]:
        points = [(k, v) for k, v in zip(x, [1.0, *ret], strict=True) if v is not None]
        style = {"color": "black", "linewidth": 2.5} if name == "mean" else {}
        ax.plot(*zip(*points, strict=True), marker="o", label=name, **style)
    ax.set_xticks(x, ["base", *[f"after {t}" for t in tasks]], rotation=20)
    ax.set_ylabel("score / base score")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_title(f"general-ability retention: {res['method']} on {res['benchmark']}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
