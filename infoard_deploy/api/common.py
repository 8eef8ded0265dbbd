"""Plumbing every API function shares: typed results, thread settings, the equivalent command line."""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional



@dataclass
class Result:
    """Base of the API's result objects: ``to_dict()`` is exactly the JSON the CLI prints with ``--json``."""

    data: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.data)

    def __getitem__(self, key: str) -> Any:  # convenience: result["passed"]
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def set_threads(threads: int) -> None:
    """``threads`` > 0 sets torch's and ONNX Runtime's intra-op threads; 0 keeps the library defaults. On a busy
    2-core machine one thread can be 5-10x faster than two (BENCHMARKS.md)."""
    if threads is None:
        return
    from ..utils import set_threads as _set

    _set(threads)


# API keyword -> CLI flag, where the flag is not simply the keyword in kebab case.
_FLAG_NAMES = {"opts": "--opt", "profiles": "--profile", "artifacts": "--artifact", "json_out": "--json",
               "overrides": "--set", "attack_opts": "--attack-opt"}
# Keywords that have no CLI flag (library-only) or are positional.
_SKIP = {"progress", "track_train_acc", "log", "reference_model", "attack_factory", "raise_on_gate"}
# Boolean options whose "off" differs from "not given" (None = the method's default).
_TRISTATE = {"asa", "mim"}


def command_line(command: str, values: Mapping[str, Any], positional: Optional[str] = None,
                 defaults: Optional[Mapping[str, Any]] = None) -> str:
    """The ``infoard-deploy COMMAND ...`` line equivalent to an API call, for the run folder's records.

    Flags are derived from the keyword names (``batch_size`` -> ``--batch-size``), so the API and the CLI
    share one vocabulary. Left out: ``None``, values equal to ``defaults``, ``False`` (except the tri-state
    switches, which become ``--no-x``). Lists of repeatable options repeat the flag, other lists are
    comma-joined; dicts become ``--opt k=v``; ``device`` is the global option before the command.
    """
    head = ["infoard-deploy"]
    dev = values.get("device")
    if dev not in (None, "auto"):
        head += ["--device", str(dev)]
    parts = head + [command]
    if positional is not None:
        parts.append(str(values[positional]))
    for key, val in values.items():
        if key in (positional, "device") or key in _SKIP or val is None:
            continue
        if defaults is not None and key in defaults and defaults[key] == val:
            continue
        flag = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
        if isinstance(val, bool):
            if val:
                parts.append(flag)
            elif key in _TRISTATE:
                parts.append("--no-" + flag[2:])
        elif isinstance(val, Mapping):
            parts += [x for k, v in val.items() for x in (flag, f"{k}={v}")]
        elif isinstance(val, (list, tuple)):
            if key in _FLAG_NAMES:
                parts += [x for v in val for x in (flag, str(v))]
            elif val:
                parts += [flag, ",".join(str(v) for v in val)]
        else:
            parts += [flag, str(val)]
    return " ".join(shlex.quote(p) for p in parts)


def config_values(cfg: Any) -> Dict[str, Any]:
    """A config dataclass as a plain dict of its fields (shallow: nested values kept as they are)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def config_defaults(cls: type) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


__all__ = ["Result", "set_threads", "command_line", "config_values", "config_defaults"]
