"""PyTorch backend: an apd-edge checkpoint's model in eval mode, the one torch inference path of the house.

The runtime (``Segmenter``, backend 'torch') calls ``infer`` (numpy in, numpy out). The benchmark uses the
split underneath: ``prepare`` moves the input to the device, ``forward`` is compute only (the output stays
on the device; CUDA work is asynchronous, ``sync`` waits), ``labels`` takes the argmax on the device.
CUDA options: FP16 weights, channels-last, CUDA-graph replay. torch is imported when the backend is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ApdError
from ...targets import TORCH_PRECISIONS


class TorchBackend:
    """Runs a checkpoint's model in eval mode; ``infer`` returns ``{"logits": float32 array}``.

    ``precision`` fp16 (half weights and inputs) and ``cuda_graph`` need a CUDA device; ``threads`` sets torch's
    process-wide intra-op thread count until ``close``.
    """

    name = "torch"

    def __init__(self, checkpoint: str | Path | dict, device: str = "cpu", expected_sha256: str | None = None,
                 precision: str = "fp32", channels_last: bool = False, cuda_graph: bool = False,
                 threads: int | None = None):
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            raise ApdError("the torch backend needs PyTorch installed (pip install torch)") from None
        from ...checkpoint import model_from_checkpoint  # noqa: PLC0415

        if not isinstance(checkpoint, dict):
            checkpoint = Path(checkpoint)
            if not checkpoint.exists():
                raise ApdError(f"the bundle's source checkpoint is not here: {checkpoint} (the torch backend needs it)")
            if expected_sha256 and checkpoint.is_file():
                from ..manifest import sha256_file

                if sha256_file(checkpoint) != expected_sha256:
                    raise ApdError(f"{checkpoint} changed since the bundle was exported (sha256 differs)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ApdError(f"device={device!r} but torch sees no CUDA GPU")
        if precision not in TORCH_PRECISIONS:
            raise ApdError(f"the torch backend runs fp32 or fp16, not {precision} (INT8 runs through ort/trt)")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ApdError("torch fp16 runs on CUDA only (CPU half-precision convolutions are slow paths)")
        if cuda_graph and not device.startswith("cuda"):
            raise ApdError("CUDA-graph replay needs a CUDA device (--device cuda)")
        self.torch = torch
        self.device = torch.device(device)
        model, self.checkpoint = model_from_checkpoint(checkpoint)
        self._prev_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: ``close`` puts the old value back
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shape: let cuDNN pick its fastest kernels
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple[Any, Any, Any]] = {}
        self.options = ",".join(o for o, on in (("channels_last", channels_last), ("cuda_graph", cuda_graph)) if on)
        self.output_names = ["logits"]

    # -- the runtime's interface ----------------------------------------------------------------------
    def infer(self, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        return {"logits": self.forward(self.prepare(x)).float().cpu().numpy()}

    # -- the split used for timing --------------------------------------------------------------------
    def prepare(self, x: np.ndarray):
        """float32 NCHW array -> a tensor on the device, in the model's dtype and memory format."""
        t = self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, non_blocking=True)
        return t.to(dtype=self.dtype, memory_format=self.memory_format)

    def forward(self, t):
        """Compute only: logits on the device (replayed from a CUDA graph when ``cuda_graph``)."""
        if self.cuda_graph:
            graph, static_in, static_out = self._graph_for(t)
            static_in.copy_(t)
            graph.replay()
            return static_out
        return self._forward(t)

    def labels(self, logits) -> np.ndarray:
        """Argmax on the device; N x H x W labels on the host (uint8 when the classes fit)."""
        torch = self.torch
        return logits.argmax(dim=1).to(torch.uint8 if logits.shape[1] <= 256 else torch.int32).cpu().numpy()

    def _forward(self, t):
        with self.torch.no_grad():
            out = self.model(t)
        return out["out"] if isinstance(out, dict) else out

    def _graph_for(self, t):
        """Capture one CUDA graph per input shape: warm up on a side stream, then record."""
        torch = self.torch
        key = tuple(t.shape)
        if key not in self._graphs:
            static_in = t.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    # -- device bookkeeping ---------------------------------------------------------------------------
    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.on_cuda:
            self.torch.cuda.synchronize(self.device)

    def reset_gpu_peak(self) -> None:
        if self.on_cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def gpu_peak_mb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20 if self.on_cuda else None

    def threads(self) -> str:
        return f"torch {self.torch.get_num_threads()}"

    def close(self) -> None:
        """Put torch's thread count back and drop captured CUDA graphs."""
        self.torch.set_num_threads(self._prev_threads)
        self._graphs.clear()
