"""Training: the method-agnostic trainer (:mod:`.loop`), its config, DDP helpers, resumable state,
metrics, and the robust-teacher methods (PGD-AT, TRADES) in :data:`TEACHER_METHODS`.

Library use::

    cfg = TrainConfig(epochs=2, out_dir="runs/x")
    result = train(student, method, bundle, cfg, teacher=teacher, card_base={"architecture": "cnn-small"})
    result.final_model_path, result.metrics["val_robust"]
"""
from ..teacher_methods import TEACHER_METHODS, build_teacher_method
from .config import TrainConfig
from .loop import TrainingDiverged, TrainResult, freeze_teacher, teacher_provenance, train
from .metrics import read_metrics

__all__ = ["TEACHER_METHODS", "build_teacher_method", "TrainConfig", "TrainResult", "TrainingDiverged",
           "freeze_teacher", "teacher_provenance", "train", "read_metrics"]
