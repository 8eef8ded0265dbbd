"""A generic name -> object registry with near-miss suggestions.

One instance per concept (students, datasets, methods, attacks, runtimes, profiles). Registry keys
are the only strings recipes and the CLI use, so an unknown key fails with "did you mean".
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Generic, Iterator, Optional, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, obj: Optional[T] = None, **meta: Any):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' registered twice")
            self._items[key] = o
            self._meta[key] = dict(meta)
            return o

        if obj is None:
            return _add
        return _add(obj)

    def get(self, name: str) -> T:
        key = str(name).strip().lower()
        if key not in self._items:
            raise UserError(self.unknown_message(name))
        return self._items[key]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name).lower(), list(self._items), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._items))})"

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return self._meta[str(name).strip().lower()]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return [(k, self._items[k]) for k in self.names()]


def build(registry: Registry[Callable[..., Any]], name: str, **kwargs: Any) -> Any:
    """Look ``name`` up and call the registered factory with ``kwargs``."""
    return registry.get(name)(**kwargs)
