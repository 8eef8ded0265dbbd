"""One line per failed artifact: the likely cause, read off the evidence, with the numbers behind it.

Checked in this order (the first that fits wins):

1. **output not logits** -- the ``output_is_logits`` gate failed (probability vectors where the reference
   emits logits: CE/margin attacks are weakened, downstream code misreads scores), or the outputs moved
   beyond the logit bound while the arg-max agrees on every input (a rescaling / temperature folded in);
2. **interface / preprocessing mismatch** -- clean top-1 agreement below :data:`INTERFACE_AGREEMENT`
   (0-255 vs [0,1] inputs, wrong normalisation, channel order, class order): the artifact is not even
   computing the same task on the same inputs;
3. **different model** -- the card's ``source_sha256`` is not the reference's, or the file changed after
   export;
4. **numeric overflow** -- NaN/inf outputs (fp16 range, a broken quantisation scale);
5. **gradient masking / attacks do not transfer** -- the artifact's own graph has zero input gradient on most
   samples (a Round / input quantiser), or it looks more robust than the reference, or Square breaks on it
   what the transfer and own-graph attacks could not;
6. **different model** -- (fp32, or provenance unknown) the function differs: agreement below the bound
   with a large |delta logit|;
7. **precision loss** -- agreement high on clean inputs and drift on adversarial ones (flips, robust or
   clean accuracy drop) of a quantized / half-precision artifact.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:  # pragma: no cover
    from .gate import GateResult
    from .robust import ModelResult, VerifyResult

INTERFACE_AGREEMENT = 50.0  # % clean top-1 agreement below which the inputs are not what the artifact expects


def diagnose(res: "VerifyResult", a: "ModelResult", gates: List["GateResult"]) -> str:
    """The likely cause of ``a``'s failed gates (empty string when none failed)."""
    mine = {g.gate: g for g in gates if g.artifact == a.name}
    failed = {k for k, g in mine.items() if not g.passed}
    if not failed:
        return ""
    r = res.reference
    par = a.parity
    clean = par.sets.get("clean") if par is not None else None
    agree = clean.top1_agreement if clean is not None and clean.n else 100.0
    rel = par.worst_rel()[1] if par is not None and par.sets else 0.0
    absd = par.worst_delta()[1] if par is not None and par.sets else 0.0
    worst = par.worst_agreement_excluding("clean") if par is not None else None
    f = res.flips(a)
    nums = (f"clean agreement {agree:.1f}%, max |delta logit| {absd:.3g}, clean {a.clean_acc:.1f}% vs "
            f"{r.clean_acc:.1f}%, robust {a.robust_acc:.1f}% vs {r.robust_acc:.1f}%")
    prov = a.info.get("provenance") or {}
    st = prov.get("status")
    if "output_is_logits" in failed:
        return f"likely cause: output is not logits ({mine['output_is_logits'].message}; {nums})"
    all_agree = par is not None and par.sets and all(s.agree == s.n for s in par.sets.values())
    if "max_logit_delta" in failed and all_agree and "finite_outputs" not in failed:
        return (f"likely cause: output is not the reference's logits (the arg-max agrees on every one of "
                f"{sum(s.n for s in par.sets.values())} inputs but max |delta logit| is {absd:.3g}: rescaled or "
                f"transformed outputs, e.g. a temperature folded into the graph)")
    if agree < INTERFACE_AGREEMENT:
        return (f"likely cause: interface/preprocessing mismatch (clean agreement only {agree:.1f}% with the "
                f"reference on identical inputs: input range, normalisation, layout or class order differ; "
                f"clean {a.clean_acc:.1f}% vs {r.clean_acc:.1f}%)")
    if st in ("mismatch", "modified"):
        return f"likely cause: different model ({mine['provenance'].message}; {nums})"
    if "finite_outputs" in failed:
        return (f"likely cause: numeric overflow at {a.precision} ({mine['finite_outputs'].message}; "
                f"ran as {a.arithmetic}; {nums})")
    zf, zr = res.zero_grad_fraction(a), res.zero_grad_fraction(r)
    if zf is not None and zf >= 0.5 and (zr is None or zr < 0.5):
        return (f"likely cause: gradient masking inside the artifact (its own graph has zero input gradient on "
                f"{100 * zf:.0f}% of samples: a non-differentiable op such as Round / an input quantiser; "
                f"{f['robust_to_broken']['count']} robust->broken / {f['broken_to_robust']['count']} broken->robust "
                f"flips, {nums})")
    if {"robust_gain", "query_excess"} & failed:
        q = res.query_extra(a)["count"]
        return (f"likely cause: gradient masking / attacks do not transfer (robust {a.robust_acc:.1f}% vs reference "
                f"{r.robust_acc:.1f}%, Square alone broke {q} samples on the artifact vs "
                f"{res.query_extra(r)['count']} on the reference; {f['broken_to_robust']['count']} samples robust "
                f"only on the artifact)")
    fp32ish = a.precision == "fp32" or st in ("cardless", "unrecorded")
    big_delta = rel > (1e-2 if a.precision == "fp32" else 0.25)
    if fp32ish and big_delta and ({"top1_agreement", "max_logit_delta"} & failed):
        return (f"likely cause: different model (the {a.precision} function differs from the reference: "
                f"{nums}; provenance: {st or 'not checked'})")
    adv = f", worst adversarial agreement {worst[1]:.1f}% on '{worst[0]}'" if worst else ""
    return (f"likely cause: precision loss ({a.precision}, ran as {a.arithmetic}): clean agreement {agree:.1f}%{adv}; "
            f"{f['robust_to_broken']['count']} robust->broken / {f['broken_to_robust']['count']} broken->robust flips, "
            f"robust {a.robust_acc:.1f}% vs {r.robust_acc:.1f}%, clean {a.clean_acc:.1f}% vs {r.clean_acc:.1f}%")


def diagnose_all(res: "VerifyResult", gates: List["GateResult"]) -> Dict[str, str]:
    out = {}
    for a in res.artifacts:
        c = diagnose(res, a, gates)
        if c:
            out[a.name] = c
    return out


__all__ = ["diagnose", "diagnose_all", "INTERFACE_AGREEMENT"]
