"""Deployment target profiles: TOML files that say what ``infoard-deploy export`` must produce.

A profile names a runtime (``onnxruntime`` or ``tensorrt``), the precisions to produce (fp32, fp16,
int8), the batch range (min/opt/max: the TensorRT optimisation profile and the batch sizes checked),
the TensorRT workspace, the INT8 calibration settings and the parity tolerances per precision.
The shipped profiles live in the top-level ``export/`` folder of the repository (found beside the
package in an editable install) or in ``<prefix>/share/infoard-deploy/export`` (wheel data files);
any other ``.toml`` path is accepted too. Unknown keys are rejected so a typo never silently falls
back to a default (ONNX Runtime's untyped ``extra_options`` are the counter-example,
see docs/architecture-notes.md).

Example::

    name = "trt-int8"
    description = "TensorRT INT8 engine from symmetric Q/DQ ONNX"
    runtime = "tensorrt"
    precisions = ["int8"]
    workspace_mb = 1024
    [batch]
    min = 1
    opt = 32
    max = 256
    [calibration]
    method = "entropy"          # minmax | entropy | percentile
    n = 512
    activations = "int8-symmetric"   # or "uint8-asymmetric" (onnxruntime profiles only)
    [tolerances.int8]
    min_top1 = 0.97
    max_robust_drop = 0.03      # verify: allowed robust-accuracy drop, fraction of n

The parity fields (``max_abs``, ``max_rel``, ``min_top1``, ``max_acc_drop``) gate the export and, again,
``infoard-deploy verify``; the robustness fields (``min_adv_top1``, ``max_robust_drop``, ``max_robust_gain``,
``max_flip_rate``, ``max_query_excess``) are read by ``verify`` only. Each field a profile leaves out falls back to the
precision's default in :data:`DEFAULT_TOLERANCES`.
"""
from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import UserError
from ..registry import Registry

RUNTIME_NAMES = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("int8-symmetric", "uint8-asymmetric")

_TOP_KEYS = {"name", "description", "runtime", "providers", "precisions", "opset", "slim", "batch",
             "workspace_mb", "calibration", "tolerances"}
_BATCH_KEYS = {"min", "opt", "max"}
_CALIB_KEYS = {"method", "n", "per_channel", "percentile", "activations"}
_TOL_KEYS = {"max_abs", "max_rel", "min_top1", "max_acc_drop", "min_adv_top1", "max_robust_drop", "max_robust_gain",
             "max_flip_rate", "max_query_excess"}
_MIN_KEYS = ("min_top1", "min_adv_top1")  # fractions that are lower bounds (must lie in [0, 1])


@dataclass(frozen=True)
class Tolerance:
    """Parity gate for one precision; ``None`` means "not checked".

    ``max_abs``: max |logit delta| vs the fp32 torch model; ``max_rel``: the same divided by
    max(1, max |reference logit|); ``min_top1``: fraction of images with the same top-1 class;
    ``max_acc_drop``: allowed drop of clean accuracy (fraction, e.g. 0.01 = 1 point).

    Read by ``infoard-deploy verify`` only (fractions of the n verified samples, paired with the reference):
    ``min_adv_top1``: top-1 agreement on the worst adversarial input set; ``max_robust_drop``: allowed
    drop of robust accuracy; ``max_robust_gain``: allowed *gain* (an artifact that looks clearly more robust
    than its source means the attacks do not reach it, or it is another model; quantization alone makes
    a few transfer examples miss, hence a wider bound than the drop's); ``max_flip_rate``: samples robust
    on the reference and broken on the artifact, and the reverse, each; ``max_query_excess``: samples only the query attack broke on the
    artifact, beyond those it broke on the reference (transfer under-estimates the artifact).
    """

    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    min_top1: Optional[float] = None
    max_acc_drop: Optional[float] = None
    min_adv_top1: Optional[float] = None
    max_robust_drop: Optional[float] = None
    max_robust_gain: Optional[float] = None
    max_flip_rate: Optional[float] = None
    max_query_excess: Optional[float] = None

    def to_dict(self) -> Dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# fp32: reordered float sums only (~1e-6 relative in practice); fp16: 10-bit mantissa (NVIDIA's
# Polygraphy maintainers expect ~1e-3 abs/rel, a full network accumulates more); int8: logits move by
# design, so only decisions are gated. The verify-only fields were set from faithful exports of the demo
# student (benchmarks/verify_faults.md): each bound sits above the largest drift measured over seeds and n,
# and verify's minimum effect (2/3 of the bound) above the typical one.
DEFAULT_TOLERANCES: Dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-4, min_top1=0.999, min_adv_top1=0.99, max_robust_drop=0.015,
                      max_robust_gain=0.03, max_flip_rate=0.015, max_query_excess=0.015),
    "fp16": Tolerance(max_rel=1e-2, min_top1=0.99, min_adv_top1=0.97, max_robust_drop=0.02,
                      max_robust_gain=0.04, max_flip_rate=0.025, max_query_excess=0.02),
    "int8": Tolerance(min_top1=0.97, max_acc_drop=0.02, min_adv_top1=0.90, max_robust_drop=0.03, max_robust_gain=0.06,
                      max_flip_rate=0.05, max_query_excess=0.03),
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    runtime: str = "onnxruntime"
    providers: Tuple[str, ...] = ()  # onnxruntime only; default CPU
    precisions: Tuple[str, ...] = ("fp32",)
    opset: int = 18
    slim: bool = False
    batch_min: int = 1
    batch_opt: int = 64
    batch_max: int = 256
    workspace_mb: int = 1024
    calib_method: str = "minmax"
    calib_n: int = 512
    per_channel: bool = True
    percentile: float = 99.999
    activations: str = "int8-symmetric"  # "uint8-asymmetric": ONNX Runtime CPU only, not TensorRT
    tolerances: Dict[str, Tolerance] = field(default_factory=dict)
    source: str = ""

    @property
    def batch(self) -> Tuple[int, int, int]:
        return (self.batch_min, self.batch_opt, self.batch_max)

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances.get(precision, DEFAULT_TOLERANCES[precision])

    def with_overrides(self, **kw: Any) -> "Profile":
        """A copy with the non-None keyword values replaced (CLI flags such as ``--calib-n``)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        return validate(replace(self, **kw)) if kw else self

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "description": self.description, "runtime": self.runtime,
                "providers": list(self.providers), "precisions": list(self.precisions), "opset": self.opset,
                "slim": self.slim, "batch": {"min": self.batch_min, "opt": self.batch_opt, "max": self.batch_max},
                "workspace_mb": self.workspace_mb,
                "calibration": {"method": self.calib_method, "n": self.calib_n, "per_channel": self.per_channel,
                                "activations": self.activations},
                "tolerances": {p: self.tolerance(p).to_dict() for p in self.precisions}, "source": self.source}


def _unknown(where: str, keys, allowed) -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise UserError(f"{where}: unknown key(s) {', '.join(repr(b) for b in bad)} "
                        f"(allowed: {', '.join(sorted(allowed))})")


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise UserError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def parse_profile(data: Mapping[str, Any], source: str = "profile") -> Profile:
    """Build a :class:`Profile` from a TOML table; unknown keys and bad values are a UserError."""
    where = f"profile {source}"
    _unknown(where, data, _TOP_KEYS)
    for req in ("name", "runtime", "precisions"):
        if req not in data:
            raise UserError(f"{where}: missing required key '{req}'")
    kw: Dict[str, Any] = {"source": source}
    kw["name"] = _typed(where, "name", data["name"], str)
    kw["description"] = _typed(where, "description", data.get("description", ""), str)
    kw["runtime"] = _typed(where, "runtime", data["runtime"], str)
    prec = data["precisions"]
    if isinstance(prec, str):
        prec = [prec]
    if not isinstance(prec, list) or not all(isinstance(p, str) for p in prec):
        raise UserError(f"{where}: 'precisions' must be a list of strings")
    kw["precisions"] = tuple(prec)
    if "providers" in data:
        prov = data["providers"]
        if not isinstance(prov, list) or not all(isinstance(p, str) for p in prov):
            raise UserError(f"{where}: 'providers' must be a list of strings")
        kw["providers"] = tuple(prov)
    for key, kind in (("opset", int), ("slim", bool), ("workspace_mb", int)):
        if key in data:
            kw[key] = _typed(where, key, data[key], kind)
    batch = data.get("batch", {})
    if not isinstance(batch, dict):
        raise UserError(f"{where}: [batch] must be a table with min/opt/max")
    _unknown(f"{where} [batch]", batch, _BATCH_KEYS)
    for k in _BATCH_KEYS:
        if k in batch:
            kw[f"batch_{k}"] = _typed(f"{where} [batch]", k, batch[k], int)
    calib = data.get("calibration", {})
    if not isinstance(calib, dict):
        raise UserError(f"{where}: [calibration] must be a table")
    _unknown(f"{where} [calibration]", calib, _CALIB_KEYS)
    if "method" in calib:
        kw["calib_method"] = _typed(where, "calibration.method", calib["method"], str)
    if "n" in calib:
        kw["calib_n"] = _typed(where, "calibration.n", calib["n"], int)
    if "per_channel" in calib:
        kw["per_channel"] = _typed(where, "calibration.per_channel", calib["per_channel"], bool)
    if "percentile" in calib:
        kw["percentile"] = _typed(where, "calibration.percentile", calib["percentile"], float)
    if "activations" in calib:
        kw["activations"] = _typed(where, "calibration.activations", calib["activations"], str)
    tols = data.get("tolerances", {})
    if not isinstance(tols, dict):
        raise UserError(f"{where}: [tolerances] must be a table of [tolerances.<precision>] tables")
    _unknown(f"{where} [tolerances]", tols, PRECISIONS)
    parsed: Dict[str, Tolerance] = {}
    for p, t in tols.items():
        if not isinstance(t, dict):
            raise UserError(f"{where}: [tolerances.{p}] must be a table")
        _unknown(f"{where} [tolerances.{p}]", t, _TOL_KEYS)
        parsed[p] = Tolerance(**{k: _typed(where, f"tolerances.{p}.{k}", v, float) for k, v in t.items()})
    kw["tolerances"] = parsed
    return validate(Profile(**kw))


def validate(p: Profile) -> Profile:
    """Cross-field checks, all in one place."""
    where = f"profile {p.source or p.name}"
    if p.runtime not in RUNTIME_NAMES:
        raise UserError(f"{where}: runtime must be one of {', '.join(RUNTIME_NAMES)}, got '{p.runtime}'")
    if not p.precisions:
        raise UserError(f"{where}: 'precisions' is empty")
    bad = [x for x in p.precisions if x not in PRECISIONS]
    if bad:
        raise UserError(f"{where}: unknown precision(s) {', '.join(bad)} (use {', '.join(PRECISIONS)})")
    if len(set(p.precisions)) != len(p.precisions):
        raise UserError(f"{where}: a precision is listed twice")
    if not (1 <= p.batch_min <= p.batch_opt <= p.batch_max):
        raise UserError(f"{where}: batch sizes must satisfy 1 <= min <= opt <= max, "
                        f"got {p.batch_min}/{p.batch_opt}/{p.batch_max}")
    if p.calib_method not in CALIB_METHODS:
        raise UserError(f"{where}: calibration.method must be one of {', '.join(CALIB_METHODS)}, got '{p.calib_method}'")
    if p.activations not in ACTIVATIONS:
        raise UserError(f"{where}: calibration.activations must be one of {', '.join(ACTIVATIONS)}, got '{p.activations}'")
    if p.runtime == "tensorrt" and p.activations != "int8-symmetric":
        raise UserError(f"{where}: TensorRT accepts only int8-symmetric Q/DQ (zero point 0); "
                        f"uint8-asymmetric is for onnxruntime profiles")
    if p.calib_n < 1:
        raise UserError(f"{where}: calibration.n must be >= 1, got {p.calib_n}")
    if not (50.0 < p.percentile <= 100.0):
        raise UserError(f"{where}: calibration.percentile must lie in (50, 100], got {p.percentile}")
    if not (7 <= p.opset <= 23):
        raise UserError(f"{where}: opset must lie in 7..23, got {p.opset}")
    if p.workspace_mb < 16:
        raise UserError(f"{where}: workspace_mb must be >= 16, got {p.workspace_mb}")
    if p.runtime == "tensorrt" and p.providers:
        raise UserError(f"{where}: 'providers' applies to onnxruntime profiles only")
    if p.runtime == "onnxruntime" and not p.providers:
        p = replace(p, providers=("CPUExecutionProvider",))
    for prec, t in p.tolerances.items():
        if prec not in p.precisions:
            raise UserError(f"{where}: tolerances given for {prec}, which the profile does not produce")
        for k, v in t.to_dict().items():
            if v < 0 or (k in _MIN_KEYS + ("max_acc_drop", "max_robust_drop", "max_robust_gain", "max_flip_rate",
                                           "max_query_excess")
                         and v > 1):
                raise UserError(f"{where}: tolerances.{prec}.{k} out of range: {v}")
    return p


def load_profile_file(path: str | Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"profile file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"profile {path.name} is not valid TOML: {e}") from None
    return parse_profile(data, source=str(path))


def profile_dirs() -> List[Path]:
    """Where shipped profiles live: ``infoard_deploy/profiles`` inside the package (any install layout)."""
    from importlib.resources import files

    d = Path(str(files("infoard_deploy") / "profiles"))
    return [d] if d.is_dir() else []


def _discover() -> Registry:
    reg: Registry = Registry("export profile")
    for d in profile_dirs():
        for f in sorted(d.glob("*.toml")):
            try:
                prof = load_profile_file(f)
            except UserError as e:  # a broken shipped file must not break `infoard-deploy list`
                warnings.warn(str(e))
                continue
            if prof.name in reg:
                continue  # the first folder wins (repo checkout before installed copy)
            reg.register(prof.name, prof, about=prof.description, runtime=prof.runtime, path=str(f))
    return reg


PROFILES: Registry = _discover()


def load_profile(name_or_path: str | Path) -> Profile:
    """A registered profile name (``trt-fp16``) or a path to a ``.toml`` file."""
    text = str(name_or_path)
    if text.endswith(".toml") or Path(text).is_file():
        return load_profile_file(text)
    return PROFILES.get(text)


__all__ = ["PROFILES", "Profile", "Tolerance", "DEFAULT_TOLERANCES", "load_profile", "load_profile_file",
           "parse_profile", "profile_dirs", "PRECISIONS", "CALIB_METHODS"]
