"""The names of what a model runs as, defined once: backends and precisions (imports nothing).

runtime, export, bench, the pipeline and the CLI all derive their choices from these tuples.
"""

from __future__ import annotations

BACKENDS = ("ort", "trt", "torch")  # ONNX Runtime, TensorRT engines, the source checkpoint in PyTorch

ONNX_PRECISIONS = ("fp32", "fp16", "int8")  # the ONNX files an export writes (and engines are built from)
# what a backend can run: the ONNX precisions, plus TensorRT 10's FP32 graph built with the FP16 flag
PRECISIONS = (*ONNX_PRECISIONS, "fp32_trtfp16")
TORCH_PRECISIONS = ("fp32", "fp16")  # the torch backend (fp16 on CUDA only)
