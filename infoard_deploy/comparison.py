"""``compare``: a resumable grid of distillation configs x seeds, evaluated on the same images, with paired
per-image differences against a reference config.

For every (config, seed) it distils with the real trainer (:func:`infoard_deploy.distill`) into
``<run>/compare/<config>-s<seed>/``, then evaluates the **final-epoch** student with one attack set for every
config (:func:`infoard_deploy.evaluate`: the recipe's ``compare.attacks`` on the first ``compare.n`` images of
``compare.split``, and the full standard AutoAttack on the first ``compare.aa_n``), keeping per-sample flags in
``eval.json``. Finished cells are skipped on re-run (their settings fingerprint is unchanged); an interrupted
training resumes. The summary (``results.json``, ``results.md``, ``robust.png``, ``paired.png``) gives mean and
std over seeds and, for each config against ``compare.reference``, the paired difference of worst-case
and AutoAttack accuracy per image with a 95 % bootstrap interval and McNemar's exact p-value.
"""
from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .api.common import Result
from .errors import UserError
from .utils import write_json_atomic, write_text_atomic


def parse_config(cfg: str) -> Tuple[str, Optional[bool], Optional[bool]]:
    """``rslad+asa`` -> ("rslad", True, None); ``infoard-asa-mim`` -> ("infoard", False, False)."""
    text = str(cfg).strip()
    base, *mods = re.split(r"(?=[+-](?:asa|mim)\b)", text)
    flags: Dict[str, Optional[bool]] = {"asa": None, "mim": None}
    for m in mods:
        if m[1:] not in flags:
            raise UserError(f"compare config '{cfg}': only +asa/-asa/+mim/-mim may follow the method name")
        flags[m[1:]] = m[0] == "+"
    if not base or "+" in base or "".join([base, *mods]) != text:
        raise UserError(f"compare config '{cfg}' is not METHOD[+asa|-asa][+mim|-mim]")
    return base, flags["asa"], flags["mim"]


def resolve_config(cfg: str, variants: Optional[Dict[str, Any]] = None) -> Tuple[str, Optional[bool], Optional[bool],
                                                                                 Dict[str, Any]]:
    """``(method, asa, mim, opts)`` of a grid config: a ``[compare.variants]`` name (its ``config`` plus its
    ``opts``) or a plain ``METHOD[+-asa][+-mim]`` (no extra options)."""
    variants = variants or {}
    if cfg not in variants:
        return (*parse_config(cfg), {})
    v = variants[cfg]
    if not isinstance(v, dict) or not isinstance(v.get("config"), str) or set(v) - {"config", "opts"}:
        raise UserError(f"compare variant '{cfg}' must be a table {{config = \"METHOD[+-asa][+-mim]\", "
                        f"opts = {{...}}}}")
    if v["config"] in variants:
        raise UserError(f"compare variant '{cfg}': its config '{v['config']}' must be a method config, not a variant")
    opts = v.get("opts", {})
    if not isinstance(opts, dict):
        raise UserError(f"compare variant '{cfg}': opts must be a table of method options")
    return (*parse_config(v["config"]), dict(opts))


class CompareResult(Result):
    """``rows``: one per (config, seed); ``summary``: per config; ``paired``: per config vs the reference."""


def _flags(ev: Dict[str, Any], key: str) -> np.ndarray:
    bits = ev["per_sample"]["worst_case"] if key == "worst_case" else ev["per_sample"]["robust"][key]
    return np.array([c == "1" for c in bits], dtype=bool)


class Comparison:
    def __init__(self, recipe, run_dir: Path, force: bool = False, log: Optional[Callable[[str], None]] = None,
                 api: Optional[Dict[str, Callable[..., Any]]] = None):
        self.recipe, self.run_dir, self.force = recipe, Path(run_dir), force
        self.log = log or (lambda s: None)
        self._api = api

    @property
    def api(self):
        if self._api is None:
            from . import api

            self._api = {"distill": api.distill, "evaluate": api.evaluate}
        return self._api

    def cell_dir(self, config: str, seed: int) -> Path:
        return self.run_dir / "compare" / f"{config}-s{seed}"

    def _teacher(self) -> Path:
        """The recipe's teacher: given, or trained once by the pipeline's teacher stage (resumable)."""
        from .pipeline import Pipeline

        r = self.recipe
        if r.teacher.path:
            return Path(r.teacher.path)
        pipe = Pipeline(replace(r, stages=["teacher"]), self.run_dir, force=False, log=self.log)
        pipe.run_stage("teacher")
        return pipe.teacher_path

    def _fingerprint(self, config: str, seed: int, teacher: Path, training_only: bool = False) -> str:
        """Hash of what a cell measured; ``training_only``: of what its student was trained with (no evaluation
        settings), so a changed evaluation re-evaluates the trained student instead of training it again."""
        r = self.recipe
        d = {"config": config, "seed": seed, "data": asdict(r.data), "eps": r.eps, "teacher": str(teacher),
             "distill": {k: v for k, v in asdict(r.distill).items() if k not in ("method", "asa", "mim")}}
        if not training_only:
            d["compare"] = {k: v for k, v in asdict(r.compare).items()
                            if k not in ("configs", "seeds", "reference", "variants")}
        if config in r.compare.variants:  # a variant's definition is part of what its cells measured
            d["variant"] = r.compare.variants[config]
        # ... and so are the settings the method resolves to: a changed default (e.g. InfoARD's ASA) must not
        # leave a stale cell counted under the new meaning of its name
        d["method"] = self._method(config).describe()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _train(self, config: str, seed: int, teacher: Path, out: Path) -> Dict[str, Any]:
        """Train the cell's student, or reuse one this grid already trained with the same settings."""
        r = self.recipe
        tfp = self._fingerprint(config, seed, teacher, training_only=True)
        done_path = out / "trained.json"
        if done_path.exists() and (out / "student.pt").exists() and not self.force:
            done = json.loads(done_path.read_text())
            if done.get("fingerprint") == tfp:
                self.log(f"- {config} seed {seed}: trained, evaluating")
                return done
        base, asa, mim, vopts = resolve_config(config, r.compare.variants)
        resume = (out / "state.pt").exists() and not (out / "student.pt").exists() and not self.force
        self.log(f"== {config} seed {seed}")
        t0 = time.perf_counter()
        res = self.api["distill"](
            teacher=str(teacher), student=r.distill.student, method=base, asa=asa, mim=mim,
            opts={**r.distill.options, **vopts}, protocol=r.distill.protocol, data=r.data.name, data_dir=r.data.dir,
            download=r.data.download, eps=r.eps, epochs=r.distill.epochs, batch_size=r.distill.batch_size,
            lr=r.distill.lr, seed=seed, train_limit=r.data.train_limit, val_fraction=r.data.val_fraction,
            out=str(out), resume=resume, force=not resume, device=r.device, progress=False)
        done = {"fingerprint": tfp, "model": str(res.model_path), "train_s": round(time.perf_counter() - t0, 1),
                "val_clean": res.get("val_clean"), "val_robust": res.get("val_robust"), "warnings": res.warnings}
        write_json_atomic(done_path, done)
        return done

    def run_cell(self, config: str, seed: int, teacher: Path) -> Dict[str, Any]:
        c = self.recipe.compare
        r = self.recipe
        out = self.cell_dir(config, seed)
        fp = self._fingerprint(config, seed, teacher)
        ev_path = out / "eval.json"
        if ev_path.exists() and not self.force:
            ev = json.loads(ev_path.read_text())
            if ev.get("fingerprint") == fp:
                self.log(f"- {config} seed {seed}: done, skipped")
                return ev
        done = self._train(config, seed, teacher, out)
        student = done["model"]
        common = dict(data=r.data.name, data_dir=r.data.dir, eps=r.eps, split=c.split, seed=0,
                      val_fraction=r.data.val_fraction, batch_size=c.batch_size, device=r.device)
        main = self.api["evaluate"](student, attacks=list(c.attacks), n=c.n, **common).to_dict()
        aa = self.api["evaluate"](student, attacks=["clean", "aa"], n=c.aa_n, **common).to_dict() if c.aa_n else None
        ev = {"fingerprint": fp, "config": config, "seed": seed, "train_s": done["train_s"],
              "val_clean": done["val_clean"], "val_robust": done["val_robust"], "warnings": done["warnings"],
              "main": main, "aa": aa}
        write_json_atomic(ev_path, ev)
        return ev

    def _method(self, cfg: str):
        """The method a config trains (built, not set up: no models touched)."""
        from .methods import build_method

        r = self.recipe
        base, asa, mim, vopts = resolve_config(cfg, r.compare.variants)
        try:
            return build_method(base, asa=asa, mim=mim, protocol=r.distill.protocol,
                                **{**r.distill.options, **vopts})
        except UserError as e:
            raise UserError(f"compare config '{cfg}': {e}") from None

    def check_configs(self) -> None:
        """Build every config's method once (no training) so a bad option fails before the first cell runs."""
        for cfg in self.recipe.compare.configs:
            self._method(cfg)

    def run(self) -> CompareResult:
        from .runlock import run_lock

        c = self.recipe.compare
        self.check_configs()  # before anything is created
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(self.run_dir, what="compare"):
            teacher = self._teacher()
            t0 = time.perf_counter()
            cells = {(cfg, s): self.run_cell(cfg, s, teacher) for s in c.seeds for cfg in c.configs}
            result = summarise(cells, c.configs, c.seeds, c.reference)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["settings"] = {"split": c.split, "n": c.n, "attacks": list(c.attacks), "aa_n": c.aa_n,
                                  "protocol": self.recipe.distill.protocol, "eps": self.recipe.eps,
                                  "data": self.recipe.data.name, "student": self.recipe.distill.student,
                                  "teacher": str(teacher)}
            out = self.run_dir / "compare"
            write_json_atomic(out / "results.json", result)
            write_text_atomic(out / "results.md", to_markdown(result))
            result["plots"] = [str(p) for p in plot(result, out)]
        return CompareResult(result)


def summarise(cells: Dict[Tuple[str, int], Dict[str, Any]], configs: List[str], seeds: List[int],
              reference: str) -> Dict[str, Any]:
    """Per-config mean / std over seeds and paired differences against ``reference`` (percent points)."""
    from .stats import paired_difference

    def stat(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return {"mean": round(statistics.mean(vals), 3),
                "std": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0, "seeds": len(vals)}

    summary, paired = {}, {}
    for cfg in configs:
        evs = [cells[(cfg, s)] for s in seeds]
        row = {"clean": stat([e["main"]["clean_acc"] for e in evs]),
               "worst_case": stat([e["main"]["worst_case_acc"] for e in evs]),
               "val_robust": stat([100 * e["val_robust"] if e.get("val_robust") is not None else None for e in evs])}
        for k in evs[0]["main"]["robust_acc"]:
            row[k] = stat([e["main"]["robust_acc"][k] for e in evs])
        if evs[0].get("aa"):
            row["AA"] = stat([e["aa"]["AA"] for e in evs])
        summary[cfg] = row
    ref = [cells[(reference, s)] for s in seeds]
    for cfg in configs:
        if cfg == reference:
            continue
        evs = [cells[(cfg, s)] for s in seeds]
        paired[cfg] = {"worst_case": paired_difference([_flags(e["main"], "worst_case") for e in evs],
                                                       [_flags(e["main"], "worst_case") for e in ref]),
                       "clean": paired_difference([_flags(e["main"], "clean") for e in evs],
                                                  [_flags(e["main"], "clean") for e in ref])}
        if ref[0].get("aa"):
            paired[cfg]["AA"] = paired_difference([_flags(e["aa"], "aa") for e in evs],
                                                  [_flags(e["aa"], "aa") for e in ref])
    rows = [{"config": cfg, "seed": s, "clean": cells[(cfg, s)]["main"]["clean_acc"],
             "worst_case": cells[(cfg, s)]["main"]["worst_case_acc"],
             "AA": cells[(cfg, s)]["aa"]["AA"] if cells[(cfg, s)].get("aa") else None,
             "train_s": cells[(cfg, s)].get("train_s")} for cfg in configs for s in seeds]
    return {"reference": reference, "seeds": list(seeds), "configs": list(configs), "summary": summary,
            "paired": paired, "rows": rows}


def to_markdown(res: Dict[str, Any]) -> str:
    s = res["settings"]
    fmt = lambda v: "-" if v is None else (f"{v['mean']:.2f} ± {v['std']:.2f}" if v["seeds"] > 1 else f"{v['mean']:.2f}")  # noqa: E731
    keys = [k for k in next(iter(res["summary"].values())) if k not in ("val_robust",)]
    lines = [f"# compare: {s['student']} on {s['data']} ({s['split']}), eps {s['eps']}, protocol {s['protocol']}", "",
             f"Final-epoch students; {', '.join(s['attacks'])} on the first {s['n']} images (worst case per image)"
             + (f"; standard AutoAttack on the first {s['aa_n']}" if s["aa_n"] else "") + f". Seeds {res['seeds']}.",
             "", "| config | " + " | ".join(keys) + " | val robust |", "|---" * (len(keys) + 2) + "|"]
    for cfg, row in res["summary"].items():
        lines.append(f"| {cfg} | " + " | ".join(fmt(row.get(k)) for k in keys) + f" | {fmt(row.get('val_robust'))} |")
    lines += ["", f"Paired per-image differences against `{res['reference']}` (points; 95 % bootstrap interval "
              "resampling images within each seed; McNemar exact p on the pooled discordant pairs):", "",
              "| config | metric | diff | 95 % CI | only config / only reference | p |", "|---|---|---|---|---|---|"]
    for cfg, p in res["paired"].items():
        for metric, d in p.items():
            lines.append(f"| {cfg} | {metric} | {d['diff']:+.2f} | [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
                         f"{sum(d['a_only'])} / {sum(d['b_only'])} | {d['mcnemar_p']:.3g} |")
    return "\n".join(lines) + "\n"


def _finish(plt, fig, ax, ylabel: str, path: Path) -> Path:
    """Label, lay out, save (120 dpi) and close one grid figure; returns its path."""
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(res: Dict[str, Any], out: Path) -> List[Path]:
    """``robust.png`` (mean ± std per config) and ``paired.png`` (differences with their intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cfgs = list(res["summary"])
    key = "AA" if res["summary"][cfgs[0]].get("AA") else "worst_case"
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cfgs), 3.2))
    vals = [res["summary"][c][key] for c in cfgs]
    ax.bar(cfgs, [v["mean"] for v in vals], yerr=[v["std"] for v in vals], capsize=3, color="#4c72b0")
    files.append(_finish(plt, fig, ax, f"{key} robust accuracy (%)", out / "robust.png"))
    if res["paired"]:
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(res["paired"]), 3.2))
        names = list(res["paired"])
        d = [res["paired"][c].get("AA", res["paired"][c]["worst_case"]) for c in names]
        ax.errorbar(names, [x["diff"] for x in d], yerr=[[x["diff"] - x["ci95"][0] for x in d],
                                                         [x["ci95"][1] - x["diff"] for x in d]], fmt="o", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        files.append(_finish(plt, fig, ax, f"paired diff vs {res['reference']} (points)", out / "paired.png"))
    return files


def compare(recipe, out: Optional[str | Path] = None, *, overrides: Optional[List[str]] = None, force: bool = False,
            log: Optional[Callable[[str], None]] = None) -> CompareResult:
    """Run the ``[compare]`` grid of a recipe (packaged name, TOML path or Recipe); see the module docstring."""
    from .recipe import Recipe, resolve_recipe

    r = recipe if isinstance(recipe, Recipe) else resolve_recipe(recipe, overrides or [])
    from .utils import check_out_dir

    run_dir = check_out_dir(Path(out) if out is not None else Path("runs") / r.name, "--out")
    return Comparison(r, run_dir, force=force, log=log).run()


__all__ = ["compare", "Comparison", "CompareResult", "parse_config", "resolve_config", "summarise", "to_markdown"]
