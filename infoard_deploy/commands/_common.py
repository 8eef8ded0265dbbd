"""Shared CLI plumbing: the console, global options, JSON output and option parsers.

Command modules in this package each define ``register(app)``; :mod:`infoard_deploy.cli` discovers
them, so adding a command never edits a shared file.
"""
from __future__ import annotations

import json
import sys
from typing import Any, List, Optional

import torch
from rich.console import Console

from ..errors import UserError
from ..utils import _json_default, parse_device, parse_eps, parse_fraction

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


class _State:
    device_spec: str = "auto"
    # When set (by the pipeline), emit_json writes the result to this file instead of stdout, so
    # progress output on stdout never mixes with the machine-readable result.
    json_sink: Optional[str] = None


STATE = _State()


def device() -> torch.device:
    """The device chosen with the global ``--device`` option."""
    return parse_device(STATE.device_spec)


def emit_json(obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    if STATE.json_sink:
        from ..utils import write_text_atomic

        write_text_atomic(STATE.json_sink, text)
        return
    sys.stdout.write(text)


def floats(text: Optional[str], name: str) -> Optional[List[float]]:
    """``"0.4914,0.4822,0.4465"`` -> list of floats (fractions allowed)."""
    if text is None:
        return None
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    if not parts:
        raise UserError(f"{name} needs comma-separated numbers")
    return [parse_fraction(p, name) for p in parts]


def ints(text: Optional[str], name: str) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        return [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise UserError(f"{name} needs comma-separated integers like 3,32,32, got '{text}'") from None


__all__ = ["console", "err_console", "STATE", "device", "emit_json", "floats", "ints", "parse_eps", "parse_fraction"]
