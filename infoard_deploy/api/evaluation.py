"""``evaluate``: clean / FGSM / PGD-20 / CW-inf / AutoAttack robust accuracy of a model file on a dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..errors import UserError
from ..utils import parse_eps, parse_fraction
from .common import Result, set_threads
from .models import ModelSpec, check_fits, is_robustbench, load_model

DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "cw", "aa")
# Settings that count something (steps, queries, restarts): zero or negative would silently skip the attack.
_COUNTS = ("steps", "n_queries", "n_restarts", "n_iter", "n_target_classes", "iters", "max_iter")


def parse_attack_opts(opts: Optional[Sequence[str]] = None,
                      square_queries: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """``["square.n_queries=1000", "aa.fab-t.steps=50"]`` -> ``{"square": {"n_queries": "1000"}, "aa": {...}}``.

    Values are checked before any work starts: a count (``steps``, ``n_queries``...) must be a positive integer,
    any other number must be finite and non-negative.
    """
    from ..attacks import ATTACKS

    out: Dict[str, Dict[str, Any]] = {}
    for item in opts or []:
        key, sep, value = str(item).partition("=")
        parts = [p.strip().lower() for p in key.split(".")]
        if not sep or len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and parts[0] != "aa"):
            raise UserError(f"--attack-opt needs ATTACK.SETTING=VALUE (or aa.COMPONENT.SETTING=VALUE), got '{item}'")
        parts[:-1] = [p.replace("_", "-") for p in parts[:-1]]  # attack names use '-', settings use '_'
        _check_value(parts[-1], value.strip(), item)
        ATTACKS.get(parts[0])
        if len(parts) == 2:
            out.setdefault(parts[0], {})[parts[1]] = value.strip()
        else:
            ATTACKS.get(parts[1])
            out.setdefault("aa", {}).setdefault(parts[1], {})[parts[2]] = value.strip()
    if square_queries is not None:
        if square_queries < 1:
            raise UserError(f"--square-queries must be positive, got {square_queries}")
        out.setdefault("square", {})["n_queries"] = square_queries
    return out


def _check_value(setting: str, value: str, item: str) -> None:
    if setting in _COUNTS:
        try:
            ok = int(value) >= 1 and str(int(value)) == value.lstrip("+")
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"--attack-opt {item}: {setting} must be a positive integer")
        return
    try:
        v = parse_fraction(value, f"--attack-opt {item}")
    except UserError:
        return  # a non-numeric setting (e.g. a loss name): the attack checks it
    if not (v == v and abs(v) != float("inf")) or v < 0:
        raise UserError(f"--attack-opt {item}: {setting} must be a finite non-negative number")


@dataclass
class EvaluateConfig:
    """What to evaluate: ``eps`` is the L-inf radius in [0,1] pixel units (None: card, then dataset);
    ``n`` the first N examples of ``split`` (None: all); ``attack_opts`` per-attack settings."""

    data: Optional[str] = None  # None: the model card's dataset
    data_dir: Optional[str] = None
    download: bool = False
    eps: Optional[float | str] = None
    attacks: Sequence[str] = DEFAULT_ATTACKS
    n: Optional[int] = None
    split: str = "test"
    val_fraction: float = 0.1
    batch_size: int = 128
    seed: int = 0
    square_queries: Optional[int] = None
    attack_opts: Sequence[str] = ()
    spec: ModelSpec = field(default_factory=ModelSpec)
    model_dir: Optional[str] = None  # RobustBench's layout, for robustbench:NAME models
    device: str = "auto"
    threads: int = 0


class EvaluationResult(Result):
    """Accuracies in percent in :meth:`to_dict` (RobustBench style); ``result`` holds per-sample flags."""

    def __init__(self, result, data: Dict[str, Any]):
        super().__init__(data)
        self.result = result

    @property
    def errors(self) -> List[str]:
        return list(self.result.errors)


def _indices(bundle, split: str, n: Optional[int], seed: int, val_fraction: float, log):
    import numpy as np

    from ..data import split_indices

    if split == "test":
        data, idx = bundle.test, np.arange(len(bundle.test))
    elif split == "val":
        data, idx = bundle.train, split_indices(len(bundle.train), val_fraction, seed)[1]
        if len(idx) == 0:
            raise UserError("--split val: the validation split is empty; raise --val-fraction")
    else:
        raise UserError(f"--split must be test or val, got '{split}'")
    if n is not None and n > len(idx) and log:
        log(f"note: {bundle.name}/{split} has {len(idx)} examples; evaluating all of them (--n {n} asked for more)")
    return data, (idx[:n] if n is not None else idx)


def evaluate(model: Union[str, Path], config: Optional[EvaluateConfig] = None, *, progress: Any = False,
             log: Optional[Callable[[str], None]] = None, **kwargs: Any) -> EvaluationResult:
    """Robust accuracy of the model file ``model`` under each attack, with gradient-masking checks.

    Example: ``evaluate("student.pt", data="digits", attacks=["clean", "pgd20"], eps=0.1, n=500)``.
    ``progress`` is False, True or a rich Console (progress goes to that console, never stdout by default).
    """
    from ..card import load_card
    from ..data import BatchLoader, load_data
    from ..evaluation import evaluate_model, resolve_attacks
    from ..utils import parse_device, require_file, seed_everything, sha256_file

    cfg = config if config is not None else EvaluateConfig(**kwargs)
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.n is not None and cfg.n <= 0:
        raise UserError(f"--n must be positive, got {cfg.n}")
    if cfg.split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{cfg.split}'")
    set_threads(cfg.threads)
    names = resolve_attacks(list(cfg.attacks) if not isinstance(cfg.attacks, str) else cfg.attacks)
    overrides = parse_attack_opts(cfg.attack_opts, cfg.square_queries)
    eps_val = parse_eps(cfg.eps) if cfg.eps is not None else None
    if is_robustbench(model):
        from ..models.robustbench import lookup

        path, default_data = model, lookup(str(model).split(":", 1)[1]).dataset
    else:
        path = require_file(model, "model file")
        card0 = load_card(path, required=False)
        default_data = card0.dataset if card0 else None
    data_name = cfg.data or cfg.spec.dataset or default_data
    if not data_name:
        raise UserError(f"give --data (the model card of {Path(path).name} names no dataset)")
    bundle = load_data(data_name, root=cfg.data_dir, download=cfg.download)
    # a foreign file: the data tells classes and input shape
    loaded = load_model(path, cfg.spec, data=bundle, model_dir=cfg.model_dir, download=cfg.download)
    path = loaded.path
    for w in loaded.warnings:
        if log:
            log("warning: " + w)
    check_fits(loaded, bundle)
    if eps_val is None:
        eps_raw = loaded.card.eps or bundle.default_eps
        if eps_raw is None:
            raise UserError("give --eps (neither the model card nor the dataset defines one)")
        eps_val = parse_eps(eps_raw)
    imageset, idx = _indices(bundle, cfg.split, cfg.n, cfg.seed, cfg.val_fraction, log)
    seed_everything(cfg.seed)
    res = evaluate_model(loaded.model, BatchLoader(imageset, idx, batch_size=cfg.batch_size), eps_val, names,
                         n=len(idx), num_classes=loaded.card.num_classes, seed=cfg.seed,
                         device=parse_device(cfg.device), progress=progress, overrides=overrides,
                         architecture=loaded.card.architecture, dataset=bundle.name, split=cfg.split,
                         normalisation=loaded.normalisation(), warnings=_other_warnings(loaded))
    res.extra.update({"model": str(path), "model_sha256": sha256_file(path), "trained_eps": loaded.card.eps,
                      "batch_size": cfg.batch_size, "model_loading": loaded.to_dict()})
    return EvaluationResult(res, res.to_json())


def _other_warnings(loaded) -> List[str]:
    """The loader's warnings, less the one about assumed normalisation that ``evaluate_model`` writes itself
    from ``normalisation["source"] == "assumed"`` (one warning per assumption)."""
    if loaded.normalisation_source != "assumed":
        return list(loaded.warnings)
    return [w for w in loaded.warnings if "normalisation" not in w.lower() and "mean" not in w.lower()]


__all__ = ["EvaluateConfig", "EvaluationResult", "evaluate", "parse_attack_opts", "DEFAULT_ATTACKS"]
