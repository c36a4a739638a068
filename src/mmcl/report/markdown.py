"""The markdown of reports: one run's report.md, a comparison of runs, and their tables."""

from __future__ import annotations

from typing import Any

from mmcl.question_types import constant_extras, constant_row

METRIC_KEYS = ("mft", "mfn", "maa", "bwt", "fwt", "forgetting")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
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
    return markdown_table(["", *tasks], rows)


def final_extras(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task, the scores beside the main one (e.g. grounding F1, BLEU-4) after the last step;
    sample counts left out. Empty when the tasks have none."""
    steps = (res.get("task_extra") or {}).get("per_step") or [{}]
    return {
        task: {k: v for k, v in scores.items() if not k.endswith("_samples")}
        for task, scores in steps[-1].items()
    }


def mean_over_tasks(extras: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for scores in extras.values() for k in scores})
    return {k: sum(s.get(k, 0.0) for s in extras.values()) / len(extras) for k in keys}


def _scores_table(label: str, rows: list[tuple[str, dict[str, float]]]) -> str:
    """A table of named rows of scores, one column per score any row has."""
    keys = sorted({k for _, scores in rows for k in scores})
    return markdown_table([label, *keys], [[n, *[s.get(k, "") for k in keys]] for n, s in rows])


def report_markdown(res: dict[str, Any]) -> str:
    """report.md of one run's results."""
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
        markdown_table(
            [k.upper() if k != "forgetting" else "Forgetting" for k in METRIC_KEYS],
            [[m[k] for k in METRIC_KEYS]],
        ),
        "",
        "## Samples scored",
        "",
        markdown_table(
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
            markdown_table(res["tasks"], [res["routing"]["accuracy"]]),
            "",
        ]
    if "general" in res:
        parts += [general_markdown(res), "![general retention](general_retention.png)", ""]
    t = res["timing"]
    parts += [
        "## Timing",
        "",
        f"train {t['train_s']:.1f} s ({t['train_samples_per_s']:.1f} "
        f"samples/s), evaluation {t['eval_s']:.1f} s",
        "",
    ]
    return "\n".join(parts)


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

    table = markdown_table(
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
    means = [(r["method"], mean_over_tasks(r["final_extra"])) for r in rows if "final_extra" in r]
    constant_types = constant_extras(results[0])
    if means and constant_types:
        means.append(("constant answer", mean_over_tasks(constant_types)))
    if means:
        table = _scores_table("method", means)
        text += f"\n## Other scores after the last task (mean over tasks)\n\n{table}\n"
    return text


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def general_markdown(res: dict[str, Any]) -> str:
    """report.md's section: each general benchmark's score on the base and after every step,
    its retention after the last step, and the mean retention per step."""
    gen, tasks = res["general"], res["tasks"]
    header = ["benchmark", "metric", "base", *[f"after {t}" for t in tasks], "retention"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, b in gen["benchmarks"].items():
        scores = ["–" if s is None else f"{s:.2f}" for s in b["scores"]]
        row = [name, b["metric"], f"{b['base']:.2f}", *scores, _pct(b["retention"][-1])]
        lines.append("| " + " | ".join(row) + " |")
    mean = ["mean retention", "", "100.0%", *[_pct(r) for r in gen["retention"]], ""]
    lines.append("| " + " | ".join(mean) + " |")
    every = f"every {gen['every']} steps and after the last" if gen["every"] > 1 else "every step"
    size = f"{gen['size']} samples per task" if gen["size"] else "all samples"
    return (
        "## General-ability retention (never trained on; retention = score / base score)\n\n"
        f"Evaluated on the base model and after {every}; {size}.\n\n" + "\n".join(lines) + "\n"
    )
