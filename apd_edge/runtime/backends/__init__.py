"""Inference backends behind one small interface: ``infer(x: float32 NCHW) -> {output name: array}``."""

from __future__ import annotations

import importlib.util


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def list_backends() -> dict[str, tuple[bool, str]]:
    """Backend name -> (available, reason). Checks installed packages only; imports nothing heavy."""
    out: dict[str, tuple[bool, str]] = {}
    if _has("onnxruntime"):
        out["ort"] = (True, "onnxruntime installed")
    else:
        out["ort"] = (False, "onnxruntime not installed (pip install onnxruntime or onnxruntime-gpu)")
    if not _has("tensorrt"):
        out["trt"] = (False, "TensorRT not installed (pip install \"apd-edge[trt-cu12]\" or [trt-cu13] by the "
                             "driver's CUDA; on Jetson JetPack's python3-libnvinfer in a venv with "
                             "--system-site-packages)")
    elif not _has("cuda"):
        out["trt"] = (False, "cuda-python not installed (pip install \"cuda-python>=12,<13\" for a CUDA 12 driver)")
    else:
        out["trt"] = (True, "tensorrt and cuda-python installed")
    out["torch"] = (True, "torch installed") if _has("torch") else (False, "torch not installed")
    return out
