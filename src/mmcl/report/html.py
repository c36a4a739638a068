"""report.html: one run's report as a single self-contained page (heatmap, curves, sample
predictions with their media embedded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.io import write_text
from mmcl.report.markdown import METRIC_KEYS

HTML_SAMPLES = 4  # sample predictions shown per task
MAX_MEDIA_BYTES = 4_000_000  # larger media files are named, not embedded

CSS = """
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


def esc(v: Any) -> str:
    import html

    return html.escape(str(v))


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else esc(v)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
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
    head = "".join(f"<th>{esc(t)}</th>" for t in tasks)
    body = ""
    for k, (label, row) in enumerate(rows):
        cells = "".join(
            f'<td class="heat{" learned" if i == k - 1 else ""}" '
            f'style="background:{to_hex(cmap(v / 100))};'
            f'color:{"#fff" if v < 60 else "#000"}">{v:.1f}</td>'
            for i, v in enumerate(row)
        )
        body += f"<tr><th>{esc(label)}</th>{cells}</tr>"
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def data_uri(data: bytes, mime: str) -> str:
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
    return f'<img alt="per-task curves" src="{data_uri(buf.getvalue(), "image/png")}">'


def _media_html(media: dict[str, list[str]]) -> str:
    import mimetypes

    parts = []
    for kind, paths in media.items():
        for path in paths:
            f = Path(path)
            if not f.is_file():
                parts.append(f'<span class="note">missing: {esc(f.name)}</span>')
                continue
            if f.stat().st_size > MAX_MEDIA_BYTES:
                parts.append(f'<span class="note">{esc(f.name)} (too large to embed)</span>')
                continue
            mime = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            uri = data_uri(f.read_bytes(), mime)
            if kind == "image":
                parts.append(f'<img alt="{esc(f.name)}" src="{uri}">')
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
                esc(r["prompt"]),
                esc(" | ".join(r["reference"])),
                esc(z.get("prediction", "")) or '<span class="note">(empty)</span>',
                f'<span class="{ok}">{esc(r["prediction"]) or "(empty)"}</span> '
                f'<span class="note">({r["score"]:.2f})</span>',
            ]
            cells += [esc(r.get("route", ""))] if routed else []
            body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        head = "".join(f"<th>{h}</th>" for h in header)
        parts.append(
            f"<h3>{esc(task)} <span class='note'>({esc(res['task_metric'][task])})</span></h3>"
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
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">{esc(res["note"])}</p>' if res.get("note") else "",
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
            f'<img alt="general retention" src="{data_uri(png, "image/png")}">',
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
        f'<p class="note">{esc(", ".join(f"{k} {v}" for k, v in res["environment"].items()))}</p>',
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_html(out: Path, res: dict[str, Any]) -> None:
    """Write report.html: viewable offline, everything embedded."""
    write_text(Path(out) / "report.html", report_html(Path(out), res))
