"""Export: checkpoint -> bundle (FP32/FP16/INT8 Q/DQ ONNX, TensorRT engines, manifest with parity).

Heavy imports (torch, onnx, onnxruntime) happen when the functions are called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bundle", "build_bundle", "check_qdq", "profile_plan"]


def __getattr__(name: str) -> Any:
    if name == "export_bundle":
        from .bundle import export_bundle

        return export_bundle
    if name == "build_bundle":  # torch-free: engines from an existing bundle
        from .build import build_bundle

        return build_bundle
    if name == "check_qdq":
        from .quantize import check_qdq

        return check_qdq
    if name == "profile_plan":
        from .tensorrt import profile_plan

        return profile_plan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
