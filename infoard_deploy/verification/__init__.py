"""Re-verify adversarial robustness on the deployed runtime (parity + robustness, per precision).

* :mod:`.parity`  -- top-1 agreement and |delta logit| on identical cached inputs (Polygraphy-style).
* :mod:`.query`   -- :class:`RuntimeModule`: any runtime as an ``nn.Module`` for query attacks (Square).
* :mod:`.whitebox` -- PGD on a model's *own* differentiable graph (fake-quant INT8, fp16), per-sample seeds.
* :mod:`.robust`  -- the per-sample cascade: transfer attacks crafted on torch and replayed on every
  artifact, the own-graph attack, Square against each artifact, eps sweep, flip rates (:func:`verify_robustness`).
* :mod:`.checks`  -- named sanity checks (``gradient_masking_suspected``, ``query_beats_transfer`` ...).
* :mod:`.provenance` -- is the artifact the reference? (its card's ``source_sha256``).
* :mod:`.bounds`  -- per-artifact bounds from its card / precision.
* :mod:`.stats`   -- Wilson / Newcombe bounds and the decision rule every statistical gate uses.
* :mod:`.gate`    -- CI gates (provenance, outputs, agreement, clean / robust change both ways, flips, query excess).
* :mod:`.diagnose` -- the likely cause of a failure, in one line.
* :mod:`.report`  -- report.json / report.md / report.html with plots, visible only complete.
* :mod:`.api`     -- :func:`run_verification`: files in, report out (the ``verify`` command).
* :mod:`.faults`  -- a catalogue of realistic deployment faults (tests and ``benchmarks/verify_faults.py``).
"""
from .api import run_verification
from .checks import Check, run_checks
from .bounds import Bounds, resolve_bounds
from .gate import GATES, GateConfig, GateResult, evaluate_gates
from .parity import ParityStats, ParityTable
from .query import RuntimeModule
from .robust import ModelResult, VerifyConfig, VerifyResult, verify_robustness

__all__ = ["run_verification", "verify_robustness", "VerifyConfig", "VerifyResult", "ModelResult", "GateConfig",
           "GateResult", "GATES", "evaluate_gates", "Check", "run_checks", "ParityStats", "ParityTable",
           "RuntimeModule", "Bounds", "resolve_bounds"]
