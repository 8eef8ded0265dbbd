"""``train_teacher`` and ``distill``: the two training entry points of the public API.

Both take a typed config (or its fields as keywords), write a run folder (``<out>/<teacher|student>.pt`` +
model card, ``state.pt`` for ``resume``, ``metrics.{jsonl,csv}``) and return a :class:`TrainingResult`.
Models take float NCHW inputs in [0, 1]; ``eps`` is an L-inf radius in the same units.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import UserError
from ..utils import check_out_dir
from .common import Result, command_line, config_defaults, config_values, set_threads
from .models import LoadedModel, ModelSpec, check_fits, load_model


@dataclass
class _TrainingOptions:
    """Options both training entry points take (the CLI flags of the same names)."""

    data: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = False
    eps: Optional[float | str] = None  # L-inf radius in [0,1] pixels ("8/255" allowed); None: the dataset's
    epochs: Optional[int] = None  # None: the method's published schedule
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    seed: int = 0
    out: Optional[str] = None  # run folder; None: runs/<kind>-<data>-<arch>-<method>
    resume: bool = False
    force: bool = False
    train_limit: Optional[int] = None
    val_fraction: float = 0.1
    val_n: Optional[int] = 1000
    amp: str = "auto"
    channels_last: bool = False
    save_every: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True  # per-epoch lines on stderr
    track_train_acc: bool = True  # one extra no-grad forward per step for the running train accuracy


@dataclass
class TeacherConfig(_TrainingOptions):
    """Adversarial training of a teacher: PGD-AT (Madry et al., ICLR 2018) or TRADES (Zhang et al., ICML 2019)."""

    arch: str = "wrn-34-10"
    method: str = "trades"
    attack_steps: Optional[int] = None
    step_frac: Optional[float] = None
    beta: Optional[float] = None


@dataclass
class DistillConfig(_TrainingOptions):
    """Adversarial distillation of ``student`` from ``teacher`` with ``method`` (InfoARD, ARD, RSLAD, IAD, AdaAD).

    ``asa``/``mim`` switch InfoARD's parts on any method (None: the method's default); ``opts`` are the
    method's hyper-parameters (``infoard-deploy list method-options``). ``teacher_arch``/``teacher_mean``/
    ``teacher_std`` describe a teacher without a model card.
    """

    teacher: str = ""
    student: str = "mobilenetv2"
    method: str = "infoard"
    asa: Optional[bool] = None
    mim: Optional[bool] = None
    opts: Dict[str, Any] = field(default_factory=dict)
    protocol: str = "official"  # official: the method's published settings | matched: shared KL/schedule/attack
    teacher_arch: Optional[str] = None
    model_dir: Optional[str] = None  # RobustBench's layout, for --teacher robustbench:NAME
    teacher_mean: Optional[List[float]] = None
    teacher_std: Optional[List[float]] = None


class TrainingResult(Result):
    """Outcome of a training run; ``model_path`` is the final checkpoint (None when stopped early)."""

    @property
    def model_path(self) -> Optional[Path]:
        return Path(self.data["model"]) if self.data.get("model") else None

    @property
    def warnings(self) -> List[str]:
        return list(self.data.get("warnings", []))


def _plain(cfg) -> Dict[str, Any]:
    """The config as JSON-able values (paths as strings), recorded in the card's provenance."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in config_values(cfg).items()}


def _config(cls, config, kwargs):
    if config is not None and kwargs:
        raise TypeError("give a config object or keyword arguments, not both")
    if config is None:
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kwargs) - names)
        if bad:
            raise UserError(f"unknown option(s) {', '.join(bad)} for {cls.__name__}")
        config = cls(**kwargs)
    return config


def _train_config(o: _TrainingOptions, *, out: str, model_name: str, attack_steps=None, extra=None):
    from ..train import TrainConfig
    from ..utils import parse_eps

    return TrainConfig(
        epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, weight_decay=o.weight_decay, seed=o.seed,
        eps=parse_eps(o.eps) if o.eps is not None else None, attack_steps=attack_steps,
        val_fraction=o.val_fraction, train_limit=o.train_limit, val_n=o.val_n, amp=str(o.amp).strip().lower(),
        channels_last=o.channels_last, out_dir=out, model_name=model_name, resume=o.resume, force=o.force,
        save_every=o.save_every, device=o.device, progress=o.progress, track_train_acc=o.track_train_acc,
        extra=dict(extra or {}))


def training_provenance(bundle, tcfg, normalisation: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What a training number depends on: software versions, the exact training / validation examples (content
    hashes of their float32 pixels and labels, in order), how seeds derive per epoch, the normalisation applied."""
    from ..data import BatchLoader, split_indices
    from ..provenance import DataFingerprint, software_versions

    train_idx, val_idx = split_indices(len(bundle.train), tcfg.val_fraction, tcfg.seed, tcfg.train_limit)
    data: Dict[str, Any] = {"name": bundle.name, "split": "train", "val_fraction": tcfg.val_fraction,
                            "train_limit": tcfg.train_limit}
    for key, idx in (("train", train_idx), ("val", val_idx)):
        fp = DataFingerprint()
        for x, y, _ in BatchLoader(bundle.train, idx, batch_size=1024):
            fp.update(x, y)
        data[key] = {"n": int(len(idx)), "sha256": fp.hexdigest()}
    return {"software": software_versions(), "data": data,
            "seed_scheme": {"kind": "train", "seed": tcfg.seed,
                            "formula": "per (seed, epoch, rank): numpy SeedSequence([seed mod 2**32, epoch, rank, "
                                       "0x1AFD]) -> python, numpy, torch and the attack generator re-seeded each epoch",
                            "split": "validation = the first round(n * val_fraction) of "
                                     "default_rng(seed + 7919).permutation(n) over the training data"},
            "normalisation": normalisation or {"mean": list(bundle.mean), "std": list(bundle.std),
                                               "source": "dataset statistics (inside the model)"}}


def _check_run_folder(tcfg) -> None:
    """Refuse a folder holding another run (or --resume with nothing to resume) before any output or work;
    the trainer checks again under the folder's lock."""
    from ..train.runstate import prepare_out_dir

    prepare_out_dir(tcfg.out, tcfg.model_name, tcfg.resume, tcfg.force, mutate=False)


def _result(result, *, kind: str, t0: float, info: Dict[str, Any], warnings: Sequence[str] = ()) -> TrainingResult:
    m = result.metrics or {}
    path = result.final_model_path
    return TrainingResult({
        "kind": kind,
        "model": str(path) if path else None,
        "card": str(path.with_name(path.stem + ".card.json")) if path else None,
        "out_dir": str(result.out_dir),
        **info,
        "epochs_done": len(result.history),
        "completed": result.completed,
        "val_clean": m.get("val_clean"),
        "val_robust": m.get("val_robust"),
        "final_loss": m.get("loss"),
        "seconds": round(time.perf_counter() - t0, 2),
        "warnings": list(warnings),
        "history": result.history,
    })


def train_teacher(config: Optional[TeacherConfig] = None, *, log: Optional[Callable[[str], None]] = None,
                  **kwargs: Any) -> TrainingResult:
    """Adversarially train a robust teacher; returns where it went and its final validation accuracy.

    Example: ``train_teacher(data="fashion-mnist", arch="cnn-mnist", method="trades", eps=0.1, epochs=10)``.
    Validation accuracies are fractions in [0, 1] on a seeded split of the training data (never the test set).
    """
    from ..data import load_data
    from ..models import build_model
    from ..train import build_teacher_method, train
    from ..utils import seed_everything

    cfg = _config(TeacherConfig, config, kwargs)
    t0 = time.perf_counter()
    set_threads(cfg.threads)
    if cfg.out is not None:
        check_out_dir(cfg.out)
    m = build_teacher_method(cfg.method, steps=cfg.attack_steps, step_frac=cfg.step_frac,
                             **({"beta": cfg.beta} if cfg.beta is not None else {}))
    bundle = load_data(cfg.data, root=cfg.data_dir, download=cfg.download)
    out_dir = cfg.out or f"runs/teacher-{bundle.name}-{cfg.arch}-{m.name}"
    cmd = command_line("train-teacher", {**config_values(cfg), "out": out_dir}, defaults=config_defaults(TeacherConfig))
    tcfg = _train_config(cfg, out=out_dir, model_name="teacher", attack_steps=m.steps,
                         extra={"command": cmd, "config": _plain(cfg), "step_frac": m.step_frac,
                                **({"beta": m.beta} if hasattr(m, "beta") else {})})
    tcfg = tcfg.resolved(m.schedule, bundle.default_eps)
    _check_run_folder(tcfg)
    if log:
        log(f"train-teacher: {m.name} {cfg.arch} on {bundle.name} eps {tcfg.eps:.4g}, {tcfg.epochs} epochs, "
            f"batch {tcfg.batch_size}, lr {tcfg.lr:g} -> {out_dir}")
    seed_everything(cfg.seed)
    c, h, _ = bundle.input_shape
    model = build_model(cfg.arch, bundle.num_classes, c, h, bundle.mean, bundle.std)
    result = train(model, m, bundle, tcfg, card_base={"architecture": cfg.arch})
    return _result(result, kind="teacher", t0=t0,
                   info={"method": m.name, "architecture": cfg.arch, "dataset": bundle.name, "eps": tcfg.eps,
                         "epochs": tcfg.epochs, "command": cmd, "provenance": training_provenance(bundle, tcfg)})


def load_teacher(path: str | Path, bundle, arch: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, model_dir: Optional[str] = None,
                 download: bool = False) -> LoadedModel:
    """Load a teacher and check it fits ``bundle``: class count, input shape, and one forward pass."""
    import torch

    from ..data import to_tensor

    c, h, w = bundle.input_shape
    if mean is not None and len(mean) != c:
        raise UserError(f"--teacher-mean has {len(mean)} values but {bundle.name} images have {c} channels")
    try:
        t = load_model(path, ModelSpec(arch=arch, mean=mean, std=std), data=bundle, model_dir=model_dir,
                       download=download)
    except UserError as e:  # the loader names the generic flags; distill's are --teacher-*
        msg = str(e)
        for flag in ("--arch", "--mean", "--std"):
            msg = msg.replace(flag + " ", "--teacher-" + flag[2:] + " ").replace(flag + ")", "--teacher-" + flag[2:] + ")")
        raise UserError(msg) from None
    check_fits(t, bundle, role="teacher")
    x = to_tensor(bundle.train.get(list(range(min(2, len(bundle.train)))))[0])
    try:
        with torch.no_grad():
            logits = t.model(x)
    except Exception as e:  # a graph model that rejects the data's shape
        raise UserError(f"teacher {t.path.name} cannot run on {bundle.name} images {tuple(x.shape[1:])}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if logits.dim() != 2 or logits.shape[1] != bundle.num_classes:
        raise UserError(f"teacher {t.path.name} returns {tuple(logits.shape)}, expected (N, {bundle.num_classes})")
    return t


def teacher_accuracy(model, bundle, tcfg, n: int = 500) -> Optional[float]:
    """Clean accuracy (fraction) of the teacher on up to ``n`` validation images: a cheap normalisation check."""
    import torch

    from ..data import BatchLoader, split_indices
    from ..utils import parse_device

    _, val = split_indices(len(bundle.train), tcfg.val_fraction, tcfg.seed, tcfg.train_limit)
    if len(val) == 0:
        return None
    dev = parse_device(tcfg.device)
    model.to(dev).eval()
    correct = 0
    val = val[:n]
    with torch.no_grad():
        for x, y, _ in BatchLoader(bundle.train, val, batch_size=250):
            correct += int((model(x.to(dev)).argmax(1).cpu() == y).sum())
    return correct / len(val)


def build_distill_method(name: str, asa: Optional[bool], mim: Optional[bool], opts: Dict[str, Any],
                         protocol: str = "official"):
    """A method object from the registry; bad options are one-line UserErrors naming the option."""
    from ..methods import build_method

    try:
        return build_method(name, asa=asa, mim=mim, protocol=protocol, **opts)
    except TypeError as e:
        raise UserError(f"bad option for method '{name}': {e}") from None
    except ValueError as e:
        raise UserError(f"method '{name}': {e}") from None


def _method_parts(m) -> Dict[str, Any]:
    """What the method really ran: its effective settings (``describe``) and which MIM levels were active."""
    out: Dict[str, Any] = {}
    for key, attr in (("settings", "describe"), ("mim_levels", "mim_levels")):
        fn = getattr(m, attr, None)
        if callable(fn):
            out[key] = fn()
    return out


def _add_to_card(model_path: Path, extra: Dict[str, Any]) -> None:
    """Merge ``extra`` into the card beside ``model_path`` (rewritten atomically)."""
    from ..card import card_path_for, load_card

    card = load_card(model_path, required=False)
    if card is not None:
        card.extra = {**card.extra, **extra}
        card.save(card_path_for(model_path))


def distill(config: Optional[DistillConfig] = None, *, log: Optional[Callable[[str], None]] = None,
            **kwargs: Any) -> TrainingResult:
    """Distil a robust ``student`` from a robust ``teacher`` file; returns the student's path and metrics.

    Example: ``distill(teacher="teacher.pt", student="cnn-small", method="infoard", data="digits", epochs=3)``.
    The teacher may be any format :func:`load_model` reads; assumptions made while loading it (e.g. an
    unknown normalisation) are returned in ``result.warnings`` and written into the student's card.
    """
    from ..data import load_data
    from ..models import MODELS, build_model
    from ..train import teacher_provenance, train
    from ..utils import seed_everything

    cfg = _config(DistillConfig, config, kwargs)
    if not cfg.teacher:
        raise UserError("distill needs a teacher: pass --teacher FILE")
    t0 = time.perf_counter()
    set_threads(cfg.threads)
    if cfg.out is not None:
        check_out_dir(cfg.out)
    MODELS.get(cfg.student)  # unknown names fail before any loading
    m = build_distill_method(cfg.method, cfg.asa, cfg.mim, dict(cfg.opts), cfg.protocol)
    bundle = load_data(cfg.data, root=cfg.data_dir, download=cfg.download)
    teacher = load_teacher(cfg.teacher, bundle, cfg.teacher_arch, cfg.teacher_mean, cfg.teacher_std,
                           model_dir=cfg.model_dir, download=cfg.download)
    name = getattr(m, "name", cfg.method)
    out_dir = cfg.out or f"runs/distill-{bundle.name}-{cfg.student}-{name}"
    cmd = command_line("distill", {**config_values(cfg), "out": out_dir}, defaults=config_defaults(DistillConfig))
    asa_on = getattr(m, "asa", None) is not None if cfg.asa is None else cfg.asa
    mim_on = getattr(m, "mim", None) is not None if cfg.mim is None else cfg.mim
    tcfg = _train_config(cfg, out=out_dir, model_name="student",
                         extra={"command": cmd, "config": _plain(cfg), "asa": asa_on, "mim": mim_on})
    tcfg = tcfg.resolved(m.schedule, bundle.default_eps)
    _check_run_folder(tcfg)
    warnings = [f"teacher: {w}" for w in teacher.warnings]
    t_acc = teacher_accuracy(teacher.model, bundle, tcfg)
    if t_acc is not None and t_acc < 1.5 / bundle.num_classes:
        warnings.append(f"the teacher is near chance on {bundle.name} validation images ({100 * t_acc:.1f}%); "
                        "check --teacher-mean/--teacher-std and the dataset")
    if log:
        log(f"distill: {name} {teacher.card.architecture} -> {cfg.student} on {bundle.name} eps {tcfg.eps:.4g}, "
            f"{tcfg.epochs} epochs, batch {tcfg.batch_size}, lr {tcfg.lr:g} -> {out_dir}")
        if t_acc is not None:
            log(f"teacher clean accuracy on {min(500, len(bundle.train))} validation images: {100 * t_acc:.1f}%")
        for w in warnings:
            log("warning: " + w)
    prov = {**teacher_provenance(teacher.path, teacher.card.architecture), "teacher_val_clean": t_acc,
            "teacher_normalisation": teacher.normalisation()}
    seed_everything(cfg.seed)
    c, h, _ = bundle.input_shape
    model = build_model(cfg.student, bundle.num_classes, c, h, bundle.mean, bundle.std)
    result = train(model, m, bundle, tcfg, teacher=teacher.model, teacher_arch=teacher.card.architecture,
                   card_base={"architecture": cfg.student, "provenance": prov,
                              **({"extra": {"warnings": warnings}} if warnings else {})})
    parts = _method_parts(m)
    if parts.get("mim_levels", {}).get("partial"):
        warnings.append("MIM ran partially: " + "; ".join(parts["mim_levels"].get("notes", [])))
    if result.final_model_path:
        _add_to_card(result.final_model_path, {"method": parts, **({"warnings": warnings} if warnings else {})})
    return _result(result, kind="student", t0=t0, warnings=warnings,
                   info={"method": name, "architecture": cfg.student, "teacher": str(cfg.teacher),
                         "teacher_architecture": teacher.card.architecture, "teacher_val_clean": t_acc,
                         "teacher_normalisation": teacher.normalisation(), "dataset": bundle.name,
                         "eps": tcfg.eps, "epochs": tcfg.epochs, "command": cmd, "method_details": parts,
                         "provenance": {**training_provenance(bundle, tcfg),
                                        "teacher_normalisation": teacher.normalisation()}})


__all__ = ["TeacherConfig", "DistillConfig", "TrainingResult", "train_teacher", "distill", "load_teacher",
           "teacher_accuracy", "build_distill_method"]
