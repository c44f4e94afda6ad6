"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers when installed."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...errors import ApdError
from ...threads import current as current_threads


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Providers to ask for, best first. ``cuda`` asks for TensorRT/CUDA EPs; CPU is always last."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise ApdError(f"unknown device {device!r} for the ort backend (expected cpu or cuda)")
    want = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not want:
        warnings.warn(f"device={device!r} but onnxruntime has no CUDA/TensorRT provider "
                      f"(available: {', '.join(available)}); running on CPU", RuntimeWarning, stacklevel=3)
    return want + ["CPUExecutionProvider"]


class OrtBackend:
    """Runs an ONNX file with onnxruntime; ``infer`` returns every output by name."""

    name = "ort"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        opts = ort.SessionOptions()
        threads = threads or current_threads()  # --threads of the command, when one set it
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        providers = choose_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ApdError(f"onnxruntime cannot load {onnx_path}: {str(exc).splitlines()[0][:200]}") from None
        used = self.session.get_providers()
        if device.startswith("cuda") and used == ["CPUExecutionProvider"] and len(providers) > 1:
            warnings.warn("CUDA/TensorRT providers failed to initialise; running on CPU", RuntimeWarning, stacklevel=2)
        self.providers = used
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        res = self.session.run(names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(names, res))
