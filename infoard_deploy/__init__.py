"""infoard-deploy: distil adversarially robust compact classifiers (InfoARD and baselines),
export them to ONNX / TensorRT, and re-verify robustness on the deployed runtime.

The public API (imported lazily, so ``import infoard_deploy`` stays cheap)::

    from infoard_deploy import load_model, train_teacher, distill, evaluate, export, verify, bench, run, compare

See :mod:`infoard_deploy.api` for a worked example; ``run`` executes a recipe (:mod:`infoard_deploy.pipeline`).
"""

__version__ = "0.1.0"

_API = {"load_model", "train_teacher", "distill", "evaluate", "export", "verify", "bench", "write_card", "inspect_model",
        "ModelSpec", "LoadedModel", "TeacherConfig", "DistillConfig", "EvaluateConfig", "TrainingResult",
        "EvaluationResult", "ExportResult", "VerifyReport", "BenchResult", "Result"}
_PIPELINE = {"run", "RunResult", "list_recipes"}
_COMPARE = {"compare", "CompareResult"}
_ERRORS = {"UserError", "GateFailure"}


def __getattr__(name: str):
    # importlib, not ``from . import x``: that form looks the name up on this package first (recursion)
    from importlib import import_module

    for module, names in (("api", _API), ("pipeline", _PIPELINE), ("comparison", _COMPARE), ("errors", _ERRORS)):
        if name in names:
            return getattr(import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module 'infoard_deploy' has no attribute '{name}'")


__all__ = sorted(_API | _PIPELINE | _COMPARE | _ERRORS | {"__version__"})
