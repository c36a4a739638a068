"""results.json -> report.md, accuracy_matrix.png and a self-contained report.html;
comparisons -> comparison.md/.json/.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.io import atomic_path, write_json, write_text
from mmcl.question_types import constant_extras, constant_row

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
    constant = constant_row(res)
    if constant:  # what the most common training answer of each question type scores
        rows.append(["constant answer", *constant])
    return _table(["", *tasks], rows)


def final_extras(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task, the scores beside the main one (e.g. grounding F1, BLEU-4) after the last step;
    sample counts left out. Empty when the tasks have none."""
    steps = (res.get("task_extra") or {}).get("per_step") or [{}]
    return {
        task: {k: v for k, v in scores.items() if not k.endswith("_samples")}
        for task, scores in steps[-1].items()
    }


def _mean_over_tasks(extras: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for scores in extras.values() for k in scores})
    return {k: sum(s.get(k, 0.0) for s in extras.values()) / len(extras) for k in keys}


def _scores_table(label: str, rows: list[tuple[str, dict[str, float]]]) -> str:
    """A table of named rows of scores, one column per score any row has."""
    keys = sorted({k for _, scores in rows for k in scores})
    return _table([label, *keys], [[n, *[s.get(k, "") for k in keys]] for n, s in rows])


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
    extras = final_extras(res)
    if extras:
        constant = [(f"{t} (constant answer)", s) for t, s in constant_extras(res).items()]
        table = _scores_table("task", [*extras.items(), *constant])
        parts += ["## Other scores after the last step", "", table, ""]
    if "routing" in res:
        parts += [
            "## Routing accuracy (%, last step)",
            "",
            _table(res["tasks"], [res["routing"]["accuracy"]]),
            "",
        ]
    if "general" in res:
        from mmcl.general import general_markdown

        parts += [general_markdown(res), "![general retention](general_retention.png)", ""]
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
    if "general" in res:
        from mmcl.general import plot_retention

        plot_retention(res, out / "general_retention.png")
    write_html(out, res)


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
        extras = final_extras(r)
        rows.append(
            {
                "method": r["method"],
                **{k: r["metrics"][k] for k in METRIC_KEYS},
                "final": dict(zip(r["tasks"], r["accuracy_matrix"][-1], strict=True)),
                "train_s": r["timing"]["train_s"],
                "eval_s": r["timing"]["eval_s"],
                "upper_bound": r.get("upper_bound", False),
                **({"routing": r["routing"]["accuracy"]} if "routing" in r else {}),
                **({"final_extra": extras} if extras else {}),
                **({"method_info": r["method_info"]} if "method_info" in r else {}),
                **(
                    {"general_retention": r["general"]["final_retention"]} if "general" in r else {}
                ),
            }
        )
    return rows


def comparison_markdown(benchmark: str, results: list[dict[str, Any]]) -> str:
    rows = comparison_rows(results)
    tasks = results[0]["tasks"]
    # general retention (%): what each method keeps of the base's general skill, last step
    general = any("general_retention" in r for r in rows)
    constant = constant_row(results[0])  # the same stream for every method: one baseline

    def kept(r: dict[str, Any]) -> list[Any]:
        v = r.get("general_retention")
        return [] if not general else ["–" if v is None else round(100 * v, 2)]

    table = _table(
        ["method", "MFT", "MFN", "MAA", "BWT", "FWT", "Forget.", *tasks, "train s", "eval s"]
        + (["general retention"] if general else []),
        [
            [
                r["method"] + (" (upper bound)" if r["upper_bound"] else ""),
                *[r[k] for k in METRIC_KEYS],
                *[r["final"][t] for t in tasks],
                r["train_s"],
                r["eval_s"],
                *kept(r),
            ]
            for r in rows
        ]
        + ([["constant answer", *[""] * 6, *constant, "", "", *kept({})]] if constant else []),
    )
    text = (
        f"# Comparison on {benchmark}\n\nSame stream, task order ({' -> '.join(tasks)}) and "
        f"seed for every method. Per-task columns are final scores (after the last task)."
        f"\n\n{table}\n"
    )
    means = [(r["method"], _mean_over_tasks(r["final_extra"])) for r in rows if "final_extra" in r]
    constant_types = constant_extras(results[0])
    if means and constant_types:
        means.append(("constant answer", _mean_over_tasks(constant_types)))
    if means:
        table = _scores_table("method", means)
        text += f"\n## Other scores after the last task (mean over tasks)\n\n{table}\n"
    return text


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


# --- report.html: one self-contained page (inline CSS, media as data: URIs, no scripts) -------
HTML_SAMPLES = 4  # sample predictions shown per task
MAX_MEDIA_BYTES = 4_000_000  # larger media files are named, not embedded

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
  color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: center; }
th { background: #f4f4f4; }
td.heat { min-width: 64px; font-weight: 600; }
.samples td { text-align: left; vertical-align: top; max-width: 260px; }
.samples img { width: 128px; image-rendering: pixelated; border: 1px solid #ccc; }
.samples audio, .samples video { width: 240px; }
td.learned { box-shadow: inset 0 0 0 3px #e8175d; }
.ok { color: #137333; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.note { color: #666; } code { background: #f4f4f4; padding: 0 3px; }
"""


def _esc(v: Any) -> str:
    import html

    return html.escape(str(v))


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else _esc(v)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _heatmap(res: dict[str, Any]) -> str:
    """The accuracy matrix as a table whose cells are coloured like accuracy_matrix.png."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["viridis"]
    tasks = res["tasks"]
    rows = [("zero-shot", res["zero_shot"])]
    rows += [(f"after {tasks[k]}", row) for k, row in enumerate(res["accuracy_matrix"])]
    head = "".join(f"<th>{_esc(t)}</th>" for t in tasks)
    body = ""
    for k, (label, row) in enumerate(rows):
        cells = "".join(
            f'<td class="heat{" learned" if i == k - 1 else ""}" '
            f'style="background:{to_hex(cmap(v / 100))};'
            f'color:{"#fff" if v < 60 else "#000"}">{v:.1f}</td>'
            for i, v in enumerate(row)
        )
        body += f"<tr><th>{_esc(label)}</th>{cells}</tr>"
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _data_uri(data: bytes, mime: str) -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _curves(res: dict[str, Any]) -> str:
    """Score of every task over the steps, as an embedded PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = res["tasks"]
    rows = [res["zero_shot"], *res["accuracy_matrix"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 3.8))
    for i, task in enumerate(tasks):
        ax.plot(range(len(rows)), [r[i] for r in rows], marker="o", label=task)
        if i + 1 < len(rows):  # the point right after the task was learned
            ax.plot([i + 1], [rows[i + 1][i]], marker="*", markersize=14, color="black")
    ax.set_xticks(range(len(rows)), ["zero-shot", *[f"after {t}" for t in tasks]], rotation=20)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0-100)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="per-task curves" src="{_data_uri(buf.getvalue(), "image/png")}">'


def _media_html(media: dict[str, list[str]]) -> str:
    import mimetypes

    parts = []
    for kind, paths in media.items():
        for path in paths:
            f = Path(path)
            if not f.is_file():
                parts.append(f'<span class="note">missing: {_esc(f.name)}</span>')
                continue
            if f.stat().st_size > MAX_MEDIA_BYTES:
                parts.append(f'<span class="note">{_esc(f.name)} (too large to embed)</span>')
                continue
            mime = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            uri = _data_uri(f.read_bytes(), mime)
            if kind == "image":
                parts.append(f'<img alt="{_esc(f.name)}" src="{uri}">')
            else:  # audio, video
                parts.append(f'<{kind} controls src="{uri}"></{kind}>')
    return "<br>".join(parts)


def _final_tag(out: Path) -> str | None:
    """The predictions folder of the last evaluation (step{k} with the largest k)."""
    steps = [int(d.name[4:]) for d in (out / "predictions").glob("step*") if d.name[4:].isdigit()]
    if steps:
        return f"step{max(steps)}"
    return "zero_shot" if (out / "predictions" / "zero_shot").is_dir() else None


def _read_rows(path: Path) -> list[dict]:
    import json

    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _samples(out: Path, res: dict[str, Any]) -> str:
    tag = _final_tag(out)
    if tag is None:
        return '<p class="note">no predictions found</p>'
    parts = []
    for task in res["tasks"]:
        rows = _read_rows(out / "predictions" / tag / f"{task}.jsonl")[:HTML_SAMPLES]
        zero = {r["id"]: r for r in _read_rows(out / "predictions" / "zero_shot" / f"{task}.jsonl")}
        routed = any("route" in r for r in rows)
        header = ["media", "question", "reference", "zero-shot answer", "final answer"]
        header += ["routed to"] if routed else []
        body = ""
        for r in rows:
            ok = "ok" if r["score"] >= 0.5 else "bad"
            z = zero.get(r["id"], {})
            cells = [
                _media_html(r.get("media", {})),
                _esc(r["prompt"]),
                _esc(" | ".join(r["reference"])),
                _esc(z.get("prediction", "")) or '<span class="note">(empty)</span>',
                f'<span class="{ok}">{_esc(r["prediction"]) or "(empty)"}</span> '
                f'<span class="note">({r["score"]:.2f})</span>',
            ]
            cells += [_esc(r.get("route", ""))] if routed else []
            body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        head = "".join(f"<th>{h}</th>" for h in header)
        parts.append(
            f"<h3>{_esc(task)} <span class='note'>({_esc(res['task_metric'][task])})</span></h3>"
            f'<table class="samples"><tr>{head}</tr>{body}</table>'
        )
    return f'<p class="note">first {HTML_SAMPLES} test samples per task ({tag})</p>' + "".join(
        parts
    )


def report_html(out: Path, res: dict[str, Any]) -> str:
    """The HTML text of report.html for the run in `out`."""
    m, counts, t = res["metrics"], res["counts"], res["timing"]
    tasks = res["tasks"]
    title = f"{res['method']} on {res['benchmark']} (seed {res['seed']})"
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">{_esc(res["note"])}</p>' if res.get("note") else "",
        "<h2>Continual metrics</h2>",
        _html_table(
            [k.upper() if k != "forgetting" else "Forgetting" for k in METRIC_KEYS],
            [[m[k] for k in METRIC_KEYS]],
        ),
        "<h2>Accuracy matrix</h2>",
        '<p class="note">row: after training on that task; score 0-100; outlined: each task '
        "right after it was learned (the diagonal)</p>",
        _heatmap(res),
        "<h2>Per-task scores over the steps</h2>",
        '<p class="note">a star marks each task right after it was learned</p>',
        _curves(res),
    ]
    if "routing" in res:
        per_step = res["routing"].get("per_step") or [res["routing"]["accuracy"]]
        body += [
            "<h2>Routing accuracy (%)</h2>",
            _html_table(
                ["", *tasks],
                [
                    [
                        f"after {tasks[k]}" if k < len(tasks) else k,
                        *["–" if v is None else v for v in r],
                    ]
                    for k, r in enumerate(per_step)
                ],
            ),
        ]
    if "general" in res and (out / "general_retention.png").is_file():
        png = (out / "general_retention.png").read_bytes()
        body += [
            "<h2>General-ability retention</h2>",
            '<p class="note">benchmarks never trained on; retention = score / base score</p>',
            f'<img alt="general retention" src="{_data_uri(png, "image/png")}">',
        ]
    body += [
        "<h2>Samples scored</h2>",
        _html_table(
            ["task", "metric", "scored", "total"],
            [[n, res["task_metric"][n], counts[n]["scored"], counts[n]["total"]] for n in tasks],
        ),
        "<h2>Sample predictions</h2>",
        _samples(out, res),
        "<h2>Timing and environment</h2>",
        f"<p>train {t['train_s']:.1f} s ({t['train_samples_per_s']:.1f} samples/s), "
        f"evaluation {t['eval_s']:.1f} s</p>",
        f'<p class="note">{_esc(", ".join(f"{k} {v}" for k, v in res["environment"].items()))}</p>',
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_html(out: Path, res: dict[str, Any]) -> None:
    """Write report.html: viewable offline, everything embedded."""
    write_text(Path(out) / "report.html", report_html(Path(out), res))
