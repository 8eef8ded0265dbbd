"""The public Python API: every command of the CLI is one call here (the CLI only parses and renders).

Example (teacher -> distill -> export -> verify)::

    import infoard_deploy as ia

    t = ia.train_teacher(data="digits", arch="cnn-small", method="trades", eps=0.1, epochs=2, out="runs/t")
    s = ia.distill(teacher=t.model_path, student="cnn-small", method="infoard", data="digits", eps=0.1,
                   epochs=2, out="runs/s")
    e = ia.export(s.model_path, ["ort-cpu-fp32", "ort-cpu-int8"], calib_data="digits", out="runs/deploy")
    r = ia.verify(s.model_path, e.artifact_paths, "digits", n=300, out="runs/verify")
    assert r.passed, r["summary"]

Inputs are always float NCHW images in [0, 1] (normalisation lives inside each model), ``eps`` is an L-inf
radius in the same units, accuracies in results are percent unless a field says ``fraction``. Bad input
raises :class:`~infoard_deploy.errors.UserError`; nothing here prints to stdout or exits the process.
"""
from .common import Result, command_line, set_threads
from .deploy import BenchResult, ExportResult, VerifyReport, bench, export, resolve_profiles, verify
from .evaluation import EvaluateConfig, EvaluationResult, evaluate, parse_attack_opts
from .models import LoadedModel, ModelSpec, check_fits, inspect_model, load_model, write_card
from .training import DistillConfig, TeacherConfig, TrainingResult, distill, train_teacher

__all__ = ["Result", "command_line", "set_threads", "BenchResult", "ExportResult", "VerifyReport", "bench", "export",
           "resolve_profiles", "verify", "EvaluateConfig", "EvaluationResult", "evaluate", "parse_attack_opts",
           "LoadedModel", "ModelSpec", "check_fits", "inspect_model", "load_model", "write_card", "DistillConfig", "TeacherConfig",
           "TrainingResult", "distill", "train_teacher"]
