"""ONNX Runtime sessions (CPU, CUDA EP) behind the :class:`Runtime` interface."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..errors import UserError
from .base import Runtime


class OrtRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: str, providers: Optional[List[str]] = None, precision: str = "fp32",
                 max_batch: int = 256, threads: int = 0):
        super().__init__(path=path, precision=precision, max_batch=max_batch)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.session = None

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed (pip install onnxruntime, or infoard-deploy[gpu])") from None
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise UserError(f"ONNX Runtime provider(s) {', '.join(missing)} not available (have: {', '.join(available)})")
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        except Exception as e:
            raise UserError(f"ONNX Runtime cannot open {self.path}: {str(e).splitlines()[0]}") from None
        self._in = self.session.get_inputs()[0].name
        self._out = self.session.get_outputs()[0].name

    def _unload(self) -> None:
        self.session = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._out], {self._in: x})[0]

    @property
    def input_shape(self):
        if self.session is None:
            return None
        shape = self.session.get_inputs()[0].shape[1:]
        return tuple(int(s) for s in shape) if all(isinstance(s, int) for s in shape) else None
