"""A restricted unpickler for data files that are pickles (the CIFAR python-version batches).

A pickle is a program: ``GLOBAL`` + ``REDUCE`` can call any importable function. This unpickler
resolves no real global at all. The only names a numpy-array pickle needs
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, ``...scalar`` and
``_codecs.encode``, how Python 3 writes ``bytes`` at protocol 2) map to local stand-ins that check
their arguments and build arrays only with ``np.frombuffer`` from a whitelist of numeric dtypes.
numpy's own ``_reconstruct`` / ``__setstate__`` are never handed file-controlled arguments: they are
not hardened against malformed input (fuzzing them crashed the interpreter). The pure-Python
unpickler is used for the same reason; CIFAR batches hold few opcodes, so it costs milliseconds.

Result: plain dicts/lists/tuples, bytes/str/int/float/bool/None, and numeric numpy arrays.
"""
from __future__ import annotations

import io
import math
import pickle
from typing import Any, Dict, Tuple

import numpy as np

from ..errors import UserError

_SAFE_DTYPES = {"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"}
_MAX_DIMS = 8


class _Refused(pickle.UnpicklingError):
    pass


def _text(v: Any) -> Any:
    return v.decode("latin1") if isinstance(v, (bytes, bytearray)) else v


class _DType:
    """Stand-in for ``numpy.dtype(code, align, copy)`` followed by ``__setstate__`` (byte order)."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = True):
        code = _text(code)
        if not isinstance(code, str) or code not in _SAFE_DTYPES:
            raise _Refused(f"refused dtype {code!r} (numeric arrays only)")
        self.code, self.order = code, "|"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("malformed dtype state")
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"malformed dtype byte order {order!r}")
        self.order = order

    def resolve(self) -> np.dtype:
        return np.dtype(self.code if self.order == "|" else self.order + self.code)


class _NDArrayType:
    """What ``numpy.ndarray`` resolves to; only accepted as ``_reconstruct``'s subtype."""


class _Array:
    """Stand-in for ``_reconstruct(ndarray, (0,), b'b')``; ``__setstate__`` builds the real array."""

    def __init__(self) -> None:
        self.value: Any = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed array state")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _DType):
            raise pickle.UnpicklingError("malformed array dtype")
        if (not isinstance(shape, tuple) or len(shape) > _MAX_DIMS
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise pickle.UnpicklingError(f"malformed array shape {shape!r}")
        if isinstance(raw, str):  # protocol-0/latin1 writers store the buffer as text
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise _Refused("refused an array whose data is not a byte buffer (object arrays are not data)")
        dt = dtype.resolve()
        if len(raw) != math.prod(shape) * dt.itemsize:
            raise pickle.UnpicklingError(f"array data holds {len(raw)} bytes, shape {shape} needs "
                                         f"{math.prod(shape) * dt.itemsize}")
        arr = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C")
        self.value = arr.copy()  # own, writable memory


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> _Array:
    if subtype is not _NDArrayType:
        raise _Refused("refused _reconstruct of anything but numpy.ndarray")
    return _Array()


def _scalar(dtype: Any, raw: Any = b"") -> Any:
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError("malformed scalar")
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    dt = dtype.resolve()
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dt.itemsize:
        raise pickle.UnpicklingError("malformed scalar data")
    return np.frombuffer(bytes(raw), dtype=dt)[0]


def _encode(s: Any, encoding: Any = "utf-8") -> bytes:
    # Python 3 writes bytes at protocol <= 2 as _codecs.encode(latin1 text, "latin1")
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Refused("refused _codecs.encode with non-text arguments")
    return s.encode(encoding)


_GLOBALS: Dict[Tuple[str, str], Any] = {("numpy", "ndarray"): _NDArrayType, ("numpy", "dtype"): _DType,
                                        ("_codecs", "encode"): _encode}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _GLOBALS[(_mod, "_reconstruct")] = _reconstruct
    _GLOBALS[(_mod, "scalar")] = _scalar


class SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler: no C-level parsing of the file
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refused global {module}.{name}") from None


def _finish(obj: Any, depth: int = 0) -> Any:
    """Swap the stand-ins for real arrays / dtypes in the loaded structure."""
    if depth > 32:
        raise pickle.UnpicklingError("structure nested too deeply")
    if isinstance(obj, _Array):
        if obj.value is None:
            raise pickle.UnpicklingError("array without data")
        return obj.value
    if isinstance(obj, _DType):
        return obj.resolve()
    if isinstance(obj, (_NDArrayType, type)) or callable(obj):
        raise _Refused("refused a pickled function or class as data")
    if isinstance(obj, dict):
        return {_finish(k, depth + 1): _finish(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finish(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish(v, depth + 1) for v in obj)
    return obj


def safe_loads(raw: bytes, source: str, what: str = "data pickle") -> Any:
    """Unpickle ``raw`` with bytes-typed Python 2 strings; any failure is a one-line UserError."""
    try:
        return _finish(SafeUnpickler(io.BytesIO(raw), encoding="bytes").load())
    except _Refused as e:
        raise UserError(f"{source}: refused to unpickle ({e}); {what}s hold only arrays and lists") from None
    except Exception as e:  # noqa: BLE001 - nothing real is resolved, so any other failure = a corrupt file
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"{source} is not a valid {what} ({type(e).__name__}: {msg})") from None


__all__ = ["SafeUnpickler", "safe_loads"]
