"""The one final report of a pipeline run: Markdown + self-contained HTML from the stage results.

Every number in it is read from a stage's ``result.json`` (written by the same commands a user runs);
nothing is recomputed here. Sections: run summary, teacher, student evaluation (per attack), export
parity per artifact, deployed-runtime verification per artifact, and the plots the verify stage made.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Dict, List

from .utils import write_text_atomic


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:120]
    return str(v)


def _table(rows: List[Dict[str, Any]], cols: List[str]) -> str:
    if not rows:
        return "_(none)_\n"
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _scalars(d: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [{"field": k, "value": v} for k, v in d.items() if isinstance(v, (int, float, str, bool)) and v is not None]


def _section_rows(res: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    v = res.get(key)
    if isinstance(v, list):
        return [r for r in v if isinstance(r, dict)]
    if isinstance(v, dict):
        return [{"name": k, **x} if isinstance(x, dict) else {"name": k, "value": x} for k, x in v.items()]
    return []


def build_markdown(pipe) -> str:
    r = pipe.recipe
    lines = [f"# Run report: {r.name}", "",
             f"Recipe: `{pipe.run_dir / 'recipe.resolved.toml'}` (resolved). Data: **{r.data.name}**, "
             f"eps: **{r.eps or 'dataset default'}**, seed {r.seed}.", "",
             "## Stages", "", _table([{"stage": s, "status": pipe.status.get(s, "-"),
                                        "seconds": round(pipe.timings.get(s, 0.0), 1)} for s in r.stages if s != "report"],
                                      ["stage", "status", "seconds"])]
    for stage, title in (("teacher", "Teacher"), ("distill", "Student (distillation)"), ("evaluate", "Robustness of the final-epoch student (PyTorch)"),
                         ("export", "Export and parity"), ("verify", "Robustness on the deployed runtimes")):
        res = pipe.result(stage)
        if not res:
            continue
        lines += [f"## {title}", ""]
        tabular = [k for k in ("attacks", "artifacts", "runtimes", "rows", "results") if _section_rows(res, k)]
        for k in tabular:
            rows = _section_rows(res, k)
            cols: List[str] = []
            for row in rows:
                cols += [c for c, v in row.items() if c not in cols and not isinstance(v, (dict, list))]
            lines += [_table(rows, cols[:12]), ""]
        for k in ("robust_acc", "parity"):  # flat {name: number} maps, e.g. robust accuracy per attack
            v = res.get(k)
            if isinstance(v, dict) and v and all(isinstance(x, (int, float)) for x in v.values()):
                lines += [f"**{k.replace('_', ' ')}**", "", _table([{"name": n, "value": x} for n, x in v.items()],
                                                                    ["name", "value"]), ""]
        scal = _scalars(res)
        if scal:
            lines += [_table(scal, ["field", "value"]), ""]
    plots = sorted((pipe.stage_dir("verify") / "report").glob("*.png")) if pipe.stage_dir("verify").exists() else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({Path('..') / 'verify' / 'report' / p.name})" for p in plots] + [""]
    lines += ["## How these numbers were made", "",
              "The student is the final-epoch model (no checkpoint picked on test data); evaluation uses the held-out "
              "test split with the attack settings listed in `evaluate/result.json`; verification crafts transfer "
              "attacks on the PyTorch reference, replays them on each artifact, runs Square against each artifact "
              "itself, and takes the per-sample worst case (see `verify/report/report.json`).", ""]
    return "\n".join(lines)


def _md_to_html(md: str, base: Path) -> str:
    body: List[str] = []
    in_table = False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                tag = "th"
            else:
                tag = "td"
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            p = (base / src).resolve()
            if p.exists():
                data = base64.b64encode(p.read_bytes()).decode()
                body.append(f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}" style="max-width:48%">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"


def write_run_report(pipe) -> Path:
    out = pipe.stage_dir("report")
    md = build_markdown(pipe)
    write_text_atomic(out / "report.md", md)
    write_text_atomic(out / "report.html", _md_to_html(md, out))
    return out / "report.md"
