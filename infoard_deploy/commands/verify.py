"""``infoard-deploy verify``: re-verify adversarial robustness on the deployed artifacts, gate CI on it.

Exit codes: 0 every artifact passed its gates; 1 a gate failed (the report, written first, says which
and the likely cause); 2 bad usage (missing file, bad value, unknown attack, an artifact without a model
card unless --allow-cardless). Every gate is on by default with bounds per artifact from its card /
precision; the flags below replace a bound for every artifact. See :mod:`infoard_deploy.verification.gate`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import GateFailure, UserError
from ._common import STATE, console, emit_json, err_console, floats


def _names(text: str, flag: str) -> List[str]:
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names and text.strip() not in ("", "none"):
        raise UserError(f"{flag} needs comma-separated names")
    return names


def _render(rep: Dict) -> None:
    c = rep["config"]
    t = Table(title=f"robustness on the deployed runtime (eps={c['eps']:.4g}, n={c['n']}); accuracies in %, "
                    "flips = robust on torch & broken on artifact / the reverse; sq = broken only by Square",
              title_justify="left", box=box.SIMPLE)
    for h in ("model", "prec", "clean", "robust", "drop", "flips", "agree", "sq"):
        if h == "model":
            t.add_column(h, no_wrap=True, overflow="fold")
        else:
            t.add_column(h, justify="left" if h == "prec" else "right", no_wrap=True)
    for m in [rep["reference"], *rep["artifacts"]]:
        art = m["role"] == "artifact"
        agree = min((s["top1_agreement"] for s in m.get("parity", {}).values()), default=None)
        t.add_row(escape(m["name"]), m["precision"], f"{m['clean_acc']:.2f}", f"{m['robust_acc']:.2f}",
                  f"{m['robust_drop']:+.2f}" if art else "-",
                  f"{m['flips']['robust_to_broken']['count']}/{m['flips']['broken_to_robust']['count']}" if art else "-",
                  f"{agree:.2f}" if agree is not None else "-", str(m["query_extra"]["count"]))
    console.print(t)
    for w in rep.get("warnings", []):
        console.print(f"[bold red]WARNING[/bold red] {escape(w)}")
    for m in rep["artifacts"]:
        console.print(f"[dim]{escape(m['name'])} ran as {escape(m.get('arithmetic', '?'))}; own-graph attack: "
                      f"{escape(m.get('own_graph', '?'))}[/dim]")
    for c in rep["checks"]:
        if c["status"] == "warn":
            console.print(f"[yellow]check {c['name']} ({escape(c['target'])}):[/yellow] {escape(c['message'])}")
    for g in rep["gates"]:
        if not g["passed"]:
            console.print(f"[red]gate {g['gate']} failed for {escape(g['artifact'])}:[/red] {escape(g['message'])}")
    for art, cause in rep.get("causes", {}).items():
        console.print(f"[bold red]{escape(art)}[/bold red]: {escape(cause)}")
    console.print(f"report: {escape(rep['files']['markdown'])} , {escape(rep['files']['html'])}")


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify_cmd(
        artifact: List[str] = typer.Option(..., "--artifact", help="deployed artifact (.onnx / .engine); repeatable"),
        reference: str = typer.Option(..., "--reference", help="the torch model the artifacts were exported from"),
        data: str = typer.Option(..., "--data", help="dataset name (see `infoard-deploy list datasets`)"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="dataset folder"),
        eps: Optional[str] = typer.Option(None, "--eps", help="L-inf radius in [0,1] pixels, e.g. 8/255 "
                                                              "(default: the reference card's, else the dataset's)"),
        n: int = typer.Option(1000, "--n", help="number of test examples (the first n)"),
        attacks: str = typer.Option("pgd20,cw,apgd-ce,apgd-t", "--attacks",
                                    help="white-box attacks crafted on the reference and replayed on every artifact"),
        square_queries: int = typer.Option(1000, "--square-queries",
                                           help="Square query budget per sample against each model (0: off)"),
        max_robust_drop: Optional[float] = typer.Option(
            None, "--max-robust-drop", help="gate: allowed robust-accuracy drop, points (default: per artifact from "
                                            "its card / precision: fp32 1.5, fp16 2, int8 3)"),
        max_robust_gain: Optional[float] = typer.Option(
            None, "--max-robust-gain", help="gate: allowed robust-accuracy GAIN, points: an artifact clearly more "
                                            "robust than its source is masked or another model "
                                            "(fp32 3, fp16 4, int8 6)"),
        max_flip_rate: Optional[float] = typer.Option(
            None, "--max-flip-rate", help="gate: max % of n flipped robust->broken, and broken->robust, each "
                                          "(default per precision: fp32 1.5, fp16 2.5, int8 5)"),
        min_top1_agreement: Optional[float] = typer.Option(
            None, "--min-top1-agreement", help="gate: min top-1 agreement % on clean and every adversarial input set "
                                               "(default per precision: clean 99.9/99/97, adversarial 99/97/90)"),
        max_logit_delta: Optional[float] = typer.Option(
            None, "--max-logit-delta", help="gate: max absolute |logit difference| on every input set (default: "
                                            "relative bound per precision, fp32 1e-4, fp16 1e-2, int8 0.5)"),
        max_clean_drop: Optional[float] = typer.Option(
            None, "--max-clean-drop", help="gate: allowed clean-accuracy drop, points "
                                           "(default fp32 0.5, fp16 1, int8 2)"),
        max_query_excess: Optional[float] = typer.Option(
            None, "--max-query-excess", help="gate: samples only Square broke on an artifact beyond the reference's, "
                                             "points (default fp32 1.5, fp16 2, int8 3)"),
        min_effect_ratio: float = typer.Option(
            2.0 / 3.0, "--min-effect-ratio", help="statistical gates fail only when the observed effect exceeds this "
                                                  "fraction of the bound AND the upper confidence bound exceeds it"),
        confidence: float = typer.Option(0.95, "--confidence", help="one-sided confidence of the upper bounds"),
        allow_cardless: bool = typer.Option(False, "--allow-cardless",
                                            help="verify artifacts without a model card (provenance unknown: the "
                                                 "report warns prominently)"),
        skip_gate: List[str] = typer.Option(
            [], "--skip-gate", help="leave a gate out (repeatable or comma-separated; reported as skipped): "
                                    "provenance, finite_outputs, output_is_logits, top1_agreement, adv_agreement, max_logit_delta, "
                                    "clean_drop, robust_drop, robust_gain, flip_rate, reverse_flip_rate, query_excess"),
        own_graph_steps: int = typer.Option(20, "--own-graph-steps",
                                            help="PGD steps per loss of the white-box attack on each artifact's own "
                                                 "graph (fake-quant INT8, fp16); 0: off"),
        fp16_cpu: str = typer.Option("torch", "--fp16-cpu",
                                     help="fp16 artifacts on the CPU: 'torch' runs the graph in float16 op by op; "
                                          "'ort' uses ONNX Runtime's CPU provider, which computes fp16 "
                                          "Conv/Gemm in fp32"),
        eps_sweep: str = typer.Option("0.5,1,1.5", "--eps-sweep",
                                      help="multiples of eps for the robust-accuracy-vs-eps plot ('none': off)"),
        masking_threshold: float = typer.Option(1.0, "--masking-threshold",
                                                help="% of n broken only by Square that fires the masking checks"),
        out: Path = typer.Option(Path("verify_report"), "--out", help="report folder"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing report"),
        json_out: bool = typer.Option(False, "--json", help="print the report as JSON"),
        seed: int = typer.Option(0, "--seed", help="attack seed"),
        batch_size: int = typer.Option(256, "--batch-size", help="samples per batch (bounds memory)"),
        threads: int = typer.Option(0, "--threads", help="CPU threads for torch and ONNX Runtime (0: default); "
                                                         "1 is fastest for small models on a busy machine"),
    ) -> None:
        """Parity + transfer + query robustness of deployed artifacts vs the torch reference; exit 1 on a failed gate."""
        from ..api import verify
        from ..verification import GateConfig

        gates = GateConfig(max_robust_drop=max_robust_drop, max_robust_gain=max_robust_gain,
                           max_flip_rate=max_flip_rate,
                           min_top1_agreement=min_top1_agreement, max_logit_delta=max_logit_delta,
                           max_clean_drop=max_clean_drop, max_query_excess=max_query_excess,
                           min_effect_ratio=min_effect_ratio, confidence=confidence, allow_cardless=allow_cardless,
                           skip=tuple(g.strip() for item in skip_gate for g in item.split(",") if g.strip()))
        sweep = [] if eps_sweep.strip().lower() in ("", "none", "off") else floats(eps_sweep, "--eps-sweep")
        attack_names = [] if attacks.strip().lower() in ("", "none") else _names(attacks, "--attacks")
        progress = None
        if not json_out:
            def progress(done: int, running: Dict[str, float]) -> None:
                err_console.print(f"[dim]{done} samples: robust "
                                  + ", ".join(f"{escape(k)} {v:.1f}%" for k, v in running.items()) + "[/dim]",
                                  soft_wrap=True)

        rep = verify(reference, artifact, data, data_dir=data_dir, eps=eps, n=n, attacks=attack_names,
                     square_queries=square_queries, eps_sweep=sweep, gates=gates, batch_size=batch_size, seed=seed,
                     device=STATE.device_spec, out=out, force=force, masking_threshold=masking_threshold,
                     progress=progress, threads=threads, own_graph_steps=own_graph_steps,
                     fp16_cpu=fp16_cpu).to_dict()
        if json_out:
            emit_json({k: v for k, v in rep.items() if k != "samples"})
        else:
            _render(rep)
        if not rep["passed"]:
            raise GateFailure(f"{rep['summary']} (report: {rep['files']['markdown']})")
