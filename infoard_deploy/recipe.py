"""Typed TOML recipes for ``infoard-deploy run``: one experiment per file, data and never code.

A recipe is parsed into frozen dataclasses; unknown keys are rejected with a "did you mean",
``--set a.b=v`` overrides are applied before validation, cross-field checks live in
:meth:`Recipe.validate`, and :func:`dump_recipe` writes the resolved recipe into the run folder.
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, get_args, get_origin, get_type_hints

from .errors import UserError
from .utils import parse_eps, parse_fraction


@dataclass(frozen=True)
class DataSection:
    name: str = "digits"
    dir: Optional[str] = None
    download: bool = False
    val_fraction: float = 0.1
    train_limit: Optional[int] = None


@dataclass(frozen=True)
class TeacherSection:
    path: Optional[str] = None  # load this teacher; when empty, train one with the settings below
    arch: str = "cnn-mnist"
    method: str = "trades"
    epochs: Optional[int] = 10
    batch_size: int = 128
    lr: Optional[float] = None
    mean: Optional[List[float]] = None  # the teacher's own normalisation, when it has no model card
    std: Optional[List[float]] = None


@dataclass(frozen=True)
class DistillSection:
    student: str = "cnn-small"
    method: str = "infoard"
    asa: Optional[bool] = None  # None: the method's default
    mim: Optional[bool] = None
    epochs: Optional[int] = None  # None: the method's published schedule
    batch_size: int = 128
    lr: Optional[float] = None
    protocol: str = "official"  # official: each method's published settings | matched: same KL, schedule, attack
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateSection:
    attacks: List[str] = field(default_factory=lambda: ["clean", "fgsm", "pgd20", "cw", "aa"])
    n: Optional[int] = 1000
    batch_size: int = 256
    split: str = "test"
    square_queries: Optional[int] = None  # None: AutoAttack standard (5000)


@dataclass(frozen=True)
class ExportSection:
    profiles: List[str] = field(default_factory=lambda: ["ort-cpu-fp32", "ort-cpu-int8"])
    calib_n: int = 512
    calib_method: str = "minmax"


@dataclass(frozen=True)
class VerifySection:
    attacks: List[str] = field(default_factory=lambda: ["pgd20", "cw", "apgd-ce", "apgd-t"])
    n: int = 500
    square_queries: int = 1000
    max_robust_drop: Optional[float] = None  # None: the per-precision bound from each artifact's export profile
    batch_size: int = 256
    fail_on_gate: bool = True


@dataclass(frozen=True)
class CompareSection:
    """``infoard-deploy compare``: a grid of distillation configs x seeds, evaluated on the same images.

    A config is a method name with ablations: ``rslad+asa`` adds ASA to RSLAD, ``infoard-asa`` removes it;
    or a name defined under ``[compare.variants]``: ``NAME = {config = "infoard", opts = {asa_rule = "teacher"}}``
    (a config plus method options over ``distill.options``), so design variants sit in the same paired grid.
    Every student is evaluated at its final epoch on the first ``n`` images of ``split`` with ``attacks``
    (per-sample worst case), plus the full standard AutoAttack on the first ``aa_n`` (0: off).
    """

    configs: List[str] = field(default_factory=lambda: ["ard", "rslad", "iad", "adaad", "infoard", "infoard-asa",
                                                        "infoard-mim"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str = "infoard"  # paired differences are reported against this config
    split: str = "test"  # test | val (choose designs on val, report on test)
    n: int = 2000
    attacks: List[str] = field(default_factory=lambda: ["clean", "apgd-ce", "apgd-t"])
    aa_n: int = 500
    batch_size: int = 256
    variants: Dict[str, Any] = field(default_factory=dict)  # NAME -> {config = "...", opts = {...}}


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    seed: int = 0
    eps: Optional[str] = None  # L-inf radius in [0,1] pixel units, fractions allowed ("8/255"); None: the dataset's
    device: str = "auto"
    stages: List[str] = field(default_factory=lambda: ["teacher", "distill", "evaluate", "export", "verify", "report"])
    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    distill: DistillSection = field(default_factory=DistillSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    export: ExportSection = field(default_factory=ExportSection)
    verify: VerifySection = field(default_factory=VerifySection)
    compare: CompareSection = field(default_factory=CompareSection)

    ALL_STAGES = ("teacher", "distill", "evaluate", "export", "verify", "report")

    def eps_value(self, default: Optional[float]) -> float:
        if self.eps is None:
            if default is None:
                raise UserError("recipe has no eps and the dataset has no default; set eps = \"8/255\"")
            return float(default)
        return parse_eps(self.eps, "eps")

    def validate(self) -> "Recipe":
        """Every value checked before any stage runs (a bad value found after training wastes the run)."""
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name) or ".." in self.name:
            raise UserError(f"recipe name '{self.name}' must be a plain folder name (letters, digits, '.', '_', '-'; "
                            "no '/' or '..'): it names the run folder under runs/")
        bad = [s for s in self.stages if s not in self.ALL_STAGES]
        if bad:
            raise UserError(f"unknown stage(s) {', '.join(bad)} (stages: {', '.join(self.ALL_STAGES)})")
        if self.eps is not None:
            parse_eps(self.eps, "eps")
        for where, value in (("teacher.epochs", self.teacher.epochs), ("distill.epochs", self.distill.epochs),
                             ("teacher.batch_size", self.teacher.batch_size),
                             ("distill.batch_size", self.distill.batch_size), ("evaluate.n", self.evaluate.n),
                             ("evaluate.batch_size", self.evaluate.batch_size),
                             ("evaluate.square_queries", self.evaluate.square_queries),
                             ("export.calib_n", self.export.calib_n), ("verify.n", self.verify.n),
                             ("verify.batch_size", self.verify.batch_size),
                             ("data.train_limit", self.data.train_limit), ("compare.n", self.compare.n),
                             ("compare.batch_size", self.compare.batch_size)):
            if value is not None and value < 1:
                raise UserError(f"recipe: {where} must be >= 1, got {value}")
        if self.verify.square_queries < 0:
            raise UserError(f"recipe: verify.square_queries must be >= 0 (0: off), got {self.verify.square_queries}")
        for where, value in (("teacher.lr", self.teacher.lr), ("distill.lr", self.distill.lr)):
            if value is not None and not value > 0:
                raise UserError(f"recipe: {where} must be a positive number, got {value}")
        if not 0 <= self.data.val_fraction < 1:
            raise UserError("data.val_fraction must lie in [0, 1)")
        if self.verify.max_robust_drop is not None and not self.verify.max_robust_drop >= 0:
            raise UserError("verify.max_robust_drop must be >= 0")
        if (self.teacher.mean is None) != (self.teacher.std is None):
            raise UserError("teacher.mean and teacher.std go together")
        for where, split in (("evaluate.split", self.evaluate.split), ("compare.split", self.compare.split)):
            if split not in ("test", "val"):
                raise UserError(f"recipe: {where} must be test or val, got '{split}'")
        if self.distill.protocol not in ("official", "matched"):
            raise UserError(f"recipe: distill.protocol must be official or matched, got '{self.distill.protocol}'")
        if self.compare.aa_n < 0:
            raise UserError(f"recipe: compare.aa_n must be >= 0 (0: off), got {self.compare.aa_n}")
        if not self.compare.configs or not self.compare.seeds:
            raise UserError("recipe: compare.configs and compare.seeds must not be empty")
        if "verify" in self.stages and "export" not in self.stages and not self.export.profiles:
            raise UserError("the verify stage needs exported artifacts: keep the export stage or its profiles")
        self._check_names()
        return self

    def _check_names(self) -> None:
        """Registry names (data, architectures, methods, attacks, profiles, device) exist."""
        from .attacks import ATTACKS
        from .data import DATASETS
        from .exporting.profiles import PROFILES
        from .methods import METHODS
        from .models import MODELS
        from .teacher_methods import TEACHER_METHODS
        from .utils import parse_device

        DATASETS.get(self.data.name)
        MODELS.get(self.distill.student)
        METHODS.get(self.distill.method)
        if self.teacher.path is None:
            MODELS.get(self.teacher.arch)
            TEACHER_METHODS.get(self.teacher.method)
        from .comparison import resolve_config

        for c in [*self.compare.configs, self.compare.reference]:
            METHODS.get(resolve_config(c, self.compare.variants)[0])
        if self.compare.reference not in self.compare.configs:
            raise UserError(f"recipe: compare.reference '{self.compare.reference}' is not one of compare.configs")
        for a in [*self.evaluate.attacks, *self.verify.attacks, *self.compare.attacks]:
            ATTACKS.get(str(a).strip().lower())
        for p in self.export.profiles:
            if str(p).endswith(".toml") or "/" in str(p):
                raise UserError(f"recipe: export.profiles takes profile names (see `infoard-deploy list "
                                f"export-profiles`), got '{p}'")
            PROFILES.get(p)
        if self.export.calib_method not in ("minmax", "entropy", "percentile"):
            raise UserError(f"recipe: export.calib_method must be minmax, entropy or percentile, "
                            f"got '{self.export.calib_method}'")
        if self.device != "auto":
            parse_device(self.device)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one TOML value against a dataclass field type."""
    origin = get_origin(tp)
    if origin is Optional or (origin is not None and type(None) in get_args(tp)):
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"recipe: [{where}] must be a table")
        return _build(tp, value, where)
    if origin in (list, List):
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"recipe: {where} must be a list")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise UserError(f"recipe: {where} must be a table")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise UserError(f"recipe: {where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"recipe: {where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"recipe: {where} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"recipe: {where} must be a number, got {value!r}")
        return parse_fraction(value, where)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise UserError(f"recipe: {where} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, table: Dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(names)})"
            full = f"{where}.{key}" if where else key
            raise UserError(f"recipe: unknown key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """``--set`` values are TOML literals (numbers, booleans, lists, quoted strings) or bare strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(table: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects a.b=value, got '{item}'")
        path, value = item.split("=", 1)
        keys = [k.strip() for k in path.strip().split(".") if k.strip()]
        if not keys:
            raise UserError(f"--set expects a.b=value, got '{item}'")
        node = table
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {path}: '{k}' is not a table")
        node[keys[-1]] = _parse_value(value.strip())
    return table


def packaged_recipes() -> Dict[str, Path]:
    """Recipes shipped inside the package: ``{"demo": path, "cifar10/wrn34-resnet18-infoard": path, ...}``."""
    from importlib.resources import files

    root = Path(str(files("infoard_deploy") / "recipes"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.toml"))}


def resolve_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """A packaged recipe name (``demo``) or a path to a TOML file, with ``--set`` overrides, validated."""
    text = str(name_or_path)
    known = packaged_recipes()
    if text in known and not Path(text).is_file():
        return load_recipe(known[text], overrides)
    if not text.endswith(".toml") and not Path(text).exists():
        from .registry import Registry

        reg: Registry = Registry("recipe")
        for k in known:
            reg.register(k, k)
        reg.get(text)  # unknown name: one line with the closest packaged names
    return load_recipe(text, overrides)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    p = Path(path)
    if not p.exists():
        raise UserError(f"recipe not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; give a recipe .toml file or a packaged recipe name "
                        "(`infoard-deploy list recipes`)")
    try:
        table = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {p.name} is not valid TOML: {e}") from None
    return recipe_from_dict(apply_overrides(table, overrides))


def recipe_from_dict(table: Dict[str, Any]) -> Recipe:
    return _build(Recipe, table, "").validate()


def recipe_to_dict(recipe: Recipe) -> Dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(recipe))


def dump_recipe(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe_to_dict(recipe))
