"""Verification report: ``report.json`` (machine-readable), ``report.md`` and a self-contained ``report.html``.

The report becomes visible only complete: every file is written into a hidden staging folder beside
``--out`` and then renamed into place (the whole folder in one rename when ``--out`` does not exist yet,
else file by file with ``report.json`` last), and an earlier report in ``--out`` loses its
``report.json`` before the attacks start (:func:`clear_old_report`). A verify killed at any point
therefore never leaves a ``report.json`` that says ``passed: true``.

Plots (matplotlib, Agg backend, PNGs written beside the report and embedded base64 in the HTML):
``robust_vs_eps.png`` (transfer-PGD robust accuracy vs eps per model), ``accuracy_bars.png`` (clean /
robust per model and precision), ``flips.png`` (robust-on-torch-broken-on-artifact counts and the reverse).
"""
from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .. import __version__
from ..errors import UserError
from ..utils import atomic_path, write_json_atomic, write_text_atomic
from .checks import Check
from .gate import GateResult, summary_line
from .robust import ModelResult, VerifyResult

REPORT_FILES = ("report.json", "report.md", "report.html")
PLOTS = ("robust_vs_eps.png", "accuracy_bars.png", "flips.png")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an --out that cannot be a writable folder (a file, ``/proc``, read-only) and an earlier report
    unless ``force``; fail before any work is done."""
    from ..utils import check_out_dir as writable_dir

    writable_dir(out, "--out")
    existing = [f for f in REPORT_FILES + PLOTS if (out / f).exists()]
    if existing and not force:
        raise UserError(f"{out} already holds a report ({', '.join(existing[:3])}); pass --force to overwrite")


def clear_old_report(out: Path) -> None:
    """Remove an earlier run's report (``--force``; ``report.json`` first) before any work, so that it cannot
    outlive a killed run."""
    for f in REPORT_FILES + PLOTS:
        p = out / f
        if p.exists():
            p.unlink()


def _model_dict(res: VerifyResult, m: ModelResult) -> Dict[str, Any]:
    st = res.config.stages
    d: Dict[str, Any] = {
        "name": m.name, "role": m.role, "runtime": m.runtime, "precision": m.precision, "path": m.path,
        "arithmetic": m.arithmetic, "own_graph": m.own_graph,
        "own_graph_zero_grad_fraction": res.zero_grad_fraction(m),
        "clean_acc": m.clean_acc, "robust_acc": m.robust_acc, "robust_count": int(m.robust.sum()),
        "cascade_acc": m.stage_acc(st), "broken_by": m.broken_by(st), "query_extra": res.query_extra(m),
        "eps_sweep": {f"{k:g}": 100.0 * v / max(res.n, 1) for k, v in sorted(m.sweep_correct.items())},
        "square_queries_used": m.queries, "seconds": m.seconds,
    }
    if m.role == "artifact":
        d["robust_drop"] = res.reference.robust_acc - m.robust_acc
        d["flips"] = res.flips(m)
        d["parity"] = m.parity.to_dict() if m.parity else {}
        prov = m.info.get("provenance")
        if prov is not None:
            d["provenance"] = {k: v for k, v in prov.items() if k != "tolerances"}
        b = m.info.get("bounds")
        if b is not None:
            d["bounds"] = b.to_dict()
    return d


def build_report(res: VerifyResult, checks: Sequence[Check], gates: Sequence[GateResult],
                 meta: Dict[str, Any], causes: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Everything in one JSON-able dict; ``meta`` carries data / reference / device / gate settings;
    ``causes`` the likely cause per failed artifact (:mod:`.diagnose`)."""
    failed = [g for g in gates if not g.passed]
    cfg = res.config
    causes = causes or {}
    warnings = [f"{g.artifact}: {g.message}" for g in gates if g.status == "warn"]
    arts = [_model_dict(res, a) for a in res.artifacts]
    for d in arts:
        d["passed"] = not any(g.artifact == d["name"] for g in failed)
        d["cause"] = causes.get(d["name"], "")
    return {
        "tool": "infoard-deploy verify", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "passed": not failed, "summary": summary_line(list(gates), causes),
        "warnings": warnings, "causes": causes,
        "failed_gates": [{"artifact": g.artifact, "gate": g.gate, "message": g.message} for g in failed],
        "config": {"eps": cfg.eps, "n": res.n, "attacks": list(cfg.attacks), "square_queries": cfg.square_queries,
                   "square_restarts": cfg.square_restarts, "eps_sweep": list(cfg.eps_sweep),
                   "sweep_attack": cfg.sweep_attack, "seed": cfg.seed, "stages": cfg.stages, **meta},
        "reference": _model_dict(res, res.reference),
        "artifacts": arts,
        "checks": [c.to_dict() for c in checks],
        "gates": [g.to_dict() for g in gates],
        "seconds": res.seconds,
        # per sample: dataset index, label and, per model, the cascade stage that first broke it (-1 = robust)
        "samples": {"index": res.indices.tolist(), "label": res.labels.tolist(), "stages": cfg.stages,
                    "broken_at": {m.name: m.broken_at.tolist() for m in [res.reference, *res.artifacts]}},
    }


# -- plots ------------------------------------------------------------------------------------------
def _plots(rep: Dict[str, Any], out: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    models = [rep["reference"], *rep["artifacts"]]
    eps = rep["config"]["eps"]
    written: List[Path] = []

    def save(fig, name: str) -> None:
        with atomic_path(out / name, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]
    for i, m in enumerate(models):  # distinct markers and dashes: identical curves must stay visible
        sw = m["eps_sweep"]
        if sw:
            xs = [float(k) * eps for k in sw]
            mk, ls = styles[i % len(styles)]
            ax.plot(xs, list(sw.values()), marker=mk, ls=ls, alpha=0.85, markersize=7 - (i % 3),
                    label=f"{m['name']} ({m['precision']})")
    ax.axvline(eps, color="grey", ls=":", lw=1)
    ax.set_xlabel("eps (L-inf, [0,1] pixels)")
    ax.set_ylabel(f"robust accuracy (%), transfer {rep['config']['sweep_attack']}")
    ax.set_title("Robust accuracy vs eps")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if any(m["eps_sweep"] for m in models):
        ax.legend(fontsize=8)
    save(fig, PLOTS[0])

    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(models) + 2), 4))
    w = 0.38
    xs = range(len(models))
    for off, key, label in ((-w / 2, "clean_acc", "clean"), (w / 2, "robust_acc", "robust (worst case)")):
        bars = ax.bar([i + off for i in xs], [m[key] for m in models], w, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(list(xs), [f"{m['name']}\n{m['precision']}" for m in models], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_title(f"Clean and robust accuracy per artifact (eps={eps:.4g})")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    save(fig, PLOTS[1])

    arts = rep["artifacts"]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(arts) + 2), 4))
    xs = range(len(arts))
    for off, key, label, color in ((-w / 2, "robust_to_broken", "robust on torch, broken on artifact", "tab:red"),
                                   (w / 2, "broken_to_robust", "broken on torch, robust on artifact", "tab:green")):
        bars = ax.bar([i + off for i in xs], [a["flips"][key]["count"] for a in arts], w, label=label, color=color)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(list(xs), [f"{a['name']}\n{a['precision']}" for a in arts], fontsize=8)
    ax.set_ylabel("samples")
    ax.set_title("Robustness flips vs the torch reference")
    ax.legend(fontsize=8)
    save(fig, PLOTS[2])
    return written


# -- markdown / html --------------------------------------------------------------------------------
def _rows(rep: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for m in [rep["reference"], *rep["artifacts"]]:
        art = m["role"] == "artifact"
        f = m.get("flips", {})
        par = m.get("parity", {})
        agree = min((s["top1_agreement"] for s in par.values()), default=None)
        delta = max((s["max_abs_delta"] for s in par.values()), default=None)
        rows.append([m["name"], m["precision"], m["runtime"], f"{m['clean_acc']:.2f}", f"{m['robust_acc']:.2f}",
                     f"{m['robust_drop']:+.2f}" if art else "-",
                     f"{f['robust_to_broken']['count']} / {f['broken_to_robust']['count']}" if art else "-",
                     f"{agree:.2f}" if agree is not None else "-", f"{delta:.3g}" if delta is not None else "-",
                     str(m["query_extra"]["count"])])
    return rows


HEADER = ["model", "precision", "runtime", "clean %", "robust %", "drop (pts)", "flips torch->art / art->torch",
          "min top-1 agree %", "max abs logit delta", "broken only by Square"]


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped so a message like 'max |delta|' keeps the table intact."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _status(g: Dict[str, Any]) -> str:
    st = g.get("status") or ("pass" if g["passed"] else "FAIL")
    return {"FAIL": "**FAIL**", "warn": "**WARN**"}.get(st, st)


def to_markdown(rep: Dict[str, Any]) -> str:
    c = rep["config"]
    lines = [f"# Deployment robustness verification: {'PASSED' if rep['passed'] else 'FAILED'}", ""]
    lines += [f"> **WARNING** {_md(w)}" for w in rep.get("warnings", [])] + ([""] if rep.get("warnings") else [])
    lines += [f"{_md(rep['summary'])}", ""]
    lines += [f"- **{_md(k)}**: {_md(v)}" for k, v in rep.get("causes", {}).items()] + \
        ([""] if rep.get("causes") else [])
    lines += [
             f"eps = {c['eps']:.6g} (L-inf), n = {c['n']}, attacks: {', '.join(c['attacks']) or 'none'}"
             f" + own-graph white-box + Square ({c['square_queries']} queries), seed {c['seed']}, "
             f"data {c.get('data', '?')}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_md(v) for v in r) + " |" for r in _rows(rep)]
    lines += ["", "## What executed", "", "| model | arithmetic | own-graph attack |", "|---|---|---|"]
    lines += [f"| {_md(m['name'])} | {_md(m.get('arithmetic', '?'))} | {_md(m.get('own_graph', '?'))} |"
              for m in [rep["reference"], *rep["artifacts"]]]
    lines += ["", "## Gates", "", "| artifact | gate | result | value | bound | detail |", "|---|---|---|---|---|---|"]
    lines += [f"| {_md(g['artifact'])} | {g['gate']} | {_status(g)} | {g['value']:.4g} | "
              f"{g['bound']:.4g} | {_md(g['message'])} |" for g in rep["gates"]]
    lines += ["", "## Checks", "", "| check | model | status | detail |", "|---|---|---|---|"]
    lines += [f"| {k['name']} | {_md(k['target'])} | {k['status']} | {_md(k['message'])} |" for k in rep["checks"]]
    lines += ["", "## Cascade (robust accuracy % after each stage)", "",
              "| model | " + " | ".join(c["stages"]) + " |", "|---|" + "---|" * len(c["stages"])]
    for m in [rep["reference"], *rep["artifacts"]]:
        lines.append(f"| {_md(m['name'])} | " + " | ".join(f"{m['cascade_acc'][s]:.2f}" for s in c["stages"]) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS] + [""]
    return "\n".join(lines)


def to_html(rep: Dict[str, Any], out: Path) -> str:
    e = html.escape

    def table(header: List[str], rows: List[List[str]]) -> str:
        h = "".join(f"<th>{e(x)}</th>" for x in header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows)
        return f"<table><tr>{h}</tr>{body}</table>"

    imgs = ""
    for p in PLOTS:
        if (out / p).exists():
            b64 = base64.b64encode((out / p).read_bytes()).decode("ascii")
            imgs += f'<figure><img alt="{e(p)}" src="data:image/png;base64,{b64}"><figcaption>{e(p)}</figcaption></figure>'
    c = rep["config"]
    gates = [[g["artifact"], g["gate"], g.get("status") or ("pass" if g["passed"] else "FAIL"), f"{g['value']:.4g}",
              f"{g['bound']:.4g}", g["message"]] for g in rep["gates"]]
    warn = "".join(f'<p class="FAILED"><b>WARNING</b> {e(w)}</p>' for w in rep.get("warnings", []))
    causes = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in rep.get("causes", {}).items())
    causes = f"<ul>{causes}</ul>" if causes else ""
    execd = [[m["name"], m.get("arithmetic", "?"), m.get("own_graph", "?")]
             for m in [rep["reference"], *rep["artifacts"]]]
    checks = [[k["name"], k["target"], k["status"], k["message"]] for k in rep["checks"]]
    status = "PASSED" if rep["passed"] else "FAILED"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>infoard-deploy verify: {status}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}th{{background:#f3f3f3}}
.PASSED{{color:#080}}.FAILED{{color:#b00}}figure{{display:inline-block;margin:0 1em}}img{{max-width:520px}}</style>
</head><body><h1>Deployment robustness verification: <span class="{status}">{status}</span></h1>
{warn}<p>{e(rep['summary'])}</p>{causes}
<p>eps = {c['eps']:.6g} (L-inf), n = {c['n']}, attacks: {e(', '.join(c['attacks']) or 'none')} + Square
({c['square_queries']} queries), seed {c['seed']}, data {e(str(c.get('data', '?')))}</p>
{table(HEADER, _rows(rep))}<h2>What executed</h2>{table(['model', 'arithmetic', 'own-graph attack'], execd)}
<h2>Gates</h2>{table(['artifact', 'gate', 'result', 'value', 'bound', 'detail'], gates)}
<h2>Checks</h2>{table(['check', 'model', 'status', 'detail'], checks)}<h2>Plots</h2>{imgs}
<p><small>infoard-deploy {e(rep['version'])}, {e(rep['created'])}</small></p></body></html>
"""


def write_report(rep: Dict[str, Any], out: Path) -> Dict[str, Path]:
    """Write plots, Markdown, HTML and JSON into a staging folder, then move them into ``out`` (see the
    module docstring); returns the final paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        names = ["report.md", "report.html"]
        written = _plots(rep, stage)
        write_text_atomic(stage / "report.md", to_markdown(rep))
        write_text_atomic(stage / "report.html", to_html(rep, stage))
        write_json_atomic(stage / "report.json", rep)
        names = [p.name for p in written] + names + ["report.json"]  # report.json last
        os.chmod(stage, 0o777 & ~_umask())
        if not out.exists():
            os.rename(stage, out)  # one atomic step: the folder appears complete
        else:
            clear_old_report(out)
            for f in names:
                os.replace(stage / f, out / f)
            shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    paths = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "report.html"}
    for p in written:
        paths[p.stem] = out / p.name
    return paths


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


__all__ = ["build_report", "write_report", "check_out_dir", "clear_old_report", "to_markdown", "to_html",
           "REPORT_FILES"]
