"""The PyTorch side of the benchmark: a checkpoint run eagerly, with the CUDA options that make
desktop-GPU numbers as good as PyTorch allows (FP16 weights, channels-last, CUDA-graph replay).

Same pre/postprocessing as the runtime (the bundle manifest's), so rows compare like for like.
``prepare`` moves the input to the device, ``infer`` is compute only (output stays on the device),
``postprocess`` takes argmax on the device and maps labels back to the image on the host.
Imported only when the torch backend is benchmarked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ApdError
from ..runtime.postprocess import restore_labels
from ..runtime.preprocess import PrepMeta, preprocess_from_manifest


class TorchRunner:
    """Eval-mode model from an apd-edge checkpoint; ``precision`` fp32 | fp16 (CUDA only)."""

    backend = "torch"

    def __init__(self, checkpoint: str | Path | dict, manifest: dict, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, cuda_graph: bool = False, threads: int | None = None) -> None:
        from ..engine.checkpoint import model_from_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ApdError("device 'cuda' asked for, but torch sees no CUDA GPU")
        if precision not in ("fp32", "fp16"):
            raise ApdError(f"the torch backend runs fp32 or fp16, not {precision} (INT8 runs through ort/trt)")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ApdError("torch fp16 is benchmarked on CUDA only (CPU half-precision convolutions are slow paths)")
        if cuda_graph and not device.startswith("cuda"):
            raise ApdError("--cuda-graph needs --device cuda")
        self._prev_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: ``close`` puts the old value back
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shape: let cuDNN pick its fastest kernels
        self.manifest = manifest
        model, ckpt = model_from_checkpoint(checkpoint)
        self._spec = (ckpt["model_name"], int(ckpt["num_classes"]), dict(ckpt.get("model_kwargs") or {}))
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.eval().to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        self.model = model
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self.weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
        self.params = sum(p.numel() for p in model.parameters())
        if hasattr(model, "num_params"):
            try:
                self.params = int(model.num_params(inference=True))
            except TypeError:
                pass
        self.options = ",".join(o for o, on in (("channels_last", channels_last), ("cuda_graph", cuda_graph)) if on)

    # -- split used for timing ------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, PrepMeta]:
        return preprocess_from_manifest(image, self.manifest)

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
        return t.to(dtype=self.dtype, memory_format=self.memory_format)

    @torch.no_grad()
    def _forward(self, t: torch.Tensor) -> torch.Tensor:
        out = self.model(t)
        if isinstance(out, dict):
            out = out["out"]
        return out

    def _graph_for(self, t: torch.Tensor):
        """Capture one CUDA graph per input shape: warm up on a side stream, then record."""
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

    def infer(self, t: torch.Tensor) -> torch.Tensor:
        """Compute only; the result stays on the device (CUDA work is asynchronous: call ``sync``)."""
        if self.cuda_graph:
            graph, static_in, static_out = self._graph_for(t)
            static_in.copy_(t)
            graph.replay()
            return static_out
        return self._forward(t)

    def postprocess(self, raw: torch.Tensor, meta: PrepMeta) -> np.ndarray:
        labels = raw.argmax(dim=1)[0].to(torch.uint8 if raw.shape[1] <= 256 else torch.int32)
        return restore_labels(labels.cpu().numpy(), meta)

    def predict(self, image: np.ndarray) -> np.ndarray:
        x, meta = self.preprocess(image)
        return self.postprocess(self.infer(self.prepare(x)), meta)

    def count_macs(self) -> int:
        """Multiply-accumulates of one forward pass at the manifest size: the model registry's profile,
        counted on the meta device (no memory, no compute)."""
        from ..models.profile import model_profile

        name, num_classes, kwargs = self._spec
        return int(model_profile(name, num_classes, tuple(self.manifest["preprocess"]["size"]), **kwargs)["macs"])

    # -- bookkeeping ----------------------------------------------------------------------------------
    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)

    def reset_gpu_peak(self) -> None:
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def gpu_peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.on_cuda else None

    def threads(self) -> str:
        return f"torch {torch.get_num_threads()}"

    def close(self) -> None:
        torch.set_num_threads(self._prev_threads)
        self._graphs.clear()
