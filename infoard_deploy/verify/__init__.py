"""Re-verify adversarial robustness on the deployed runtime (parity + robustness, per precision).

* :mod:`.parity`  -- top-1 agreement and |delta logit| on identical cached inputs (Polygraphy-style).
* :mod:`.query`   -- :class:`RuntimeModule`: any runtime as an ``nn.Module`` for query attacks (Square).
* :mod:`.robust`  -- the per-sample cascade: transfer attacks crafted once on torch and replayed on every
  artifact, Square against each artifact, eps sweep, flip rates (:func:`verify_robustness`).
* :mod:`.checks`  -- named sanity checks (``gradient_masking_suspected``, ``query_beats_transfer`` ...).
* :mod:`.gate`    -- CI gates (robust drop, flip rate, top-1 agreement, logit delta).
* :mod:`.report`  -- report.json / report.md / report.html with plots.
* :mod:`.api`     -- :func:`run_verification`: files in, report out (the ``verify`` command).
"""
from .api import run_verification
from .checks import Check, run_checks
from .gate import GateConfig, GateResult, evaluate_gates
from .parity import ParityStats, ParityTable
from .query import RuntimeModule
from .robust import ModelResult, VerifyConfig, VerifyResult, verify_robustness

__all__ = ["run_verification", "verify_robustness", "VerifyConfig", "VerifyResult", "ModelResult", "GateConfig",
           "GateResult", "evaluate_gates", "Check", "run_checks", "ParityStats", "ParityTable", "RuntimeModule"]
