"""The bench's one face over every backend: a runtime ``Segmenter`` split into the steps that are timed.

``preprocess`` (host) -> ``prepare`` (to the device: torch only) -> ``infer`` (compute only) ->
``postprocess`` (labels at the image size). ONNX Runtime and TensorRT return host arrays from ``infer``;
the torch backend keeps its output on the device and takes the argmax there, so its compute time is the
network alone (the runtime's ``TorchBackend`` holds the model, device, FP16, channels-last, CUDA graphs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ApdError
from ..runtime.postprocess import restore_labels
from .artifacts import Artifact
from .options import BenchOptions


class BenchRunner:
    """Adapts a ``Segmenter`` (any backend) to the timing interface of ``measure_row``."""

    def __init__(self, seg) -> None:
        self.seg = seg
        self.backend = seg.backend
        self.impl = seg.impl
        self.session = getattr(self.impl, "session", None)  # ONNX Runtime's, for threads and the batch axis
        self.options = getattr(self.impl, "options", "")
        self.preprocess = seg.preprocess
        self._torch = self.backend == "torch"

    # -- the timed steps ------------------------------------------------------------------------------
    def prepare(self, x: np.ndarray):
        return self.impl.prepare(x) if self._torch else x

    def infer(self, x):
        """Compute only (torch: the output stays on the device; call ``sync``)."""
        return self.impl.forward(x) if self._torch else self.seg.infer(x)

    def postprocess(self, raw, meta) -> np.ndarray:
        if self._torch:
            return restore_labels(self.impl.labels(raw)[0], meta)
        return self.seg.postprocess(raw, meta)

    def predict(self, image: np.ndarray) -> np.ndarray:
        x, meta = self.preprocess(image)
        return self.postprocess(self.infer(self.prepare(x)), meta)

    # -- device and host bookkeeping ------------------------------------------------------------------
    @property
    def on_cuda(self) -> bool:
        """Torch on a CUDA device: compute is timed with CUDA events."""
        return self._torch and self.impl.on_cuda

    def sync(self) -> None:  # ORT and the TRT backend return host arrays: already synchronised
        if self._torch:
            self.impl.sync()

    def reset_gpu_peak(self) -> None:
        if self._torch:
            self.impl.reset_gpu_peak()

    def gpu_peak_mb(self) -> float | None:
        """torch's peak allocation since ``reset_gpu_peak``; None for ort/trt (measured around the row)."""
        return self.impl.gpu_peak_mb() if self._torch else None

    def static_batch(self) -> int | None:
        """The fixed batch size of the model input, or None when the batch axis is dynamic."""
        if self._torch:
            return None
        if self.session is not None:
            dim0 = self.session.get_inputs()[0].shape[0]
            return dim0 if isinstance(dim0, int) and dim0 > 0 else None
        shape = (self.seg.manifest.get("input") or {}).get("shape")
        if shape and isinstance(shape[0], int):
            return shape[0]
        return None

    def threads(self) -> str:
        if self._torch:
            return self.impl.threads()
        if self.session is None:
            return ""
        n = self.session.get_session_options().intra_op_num_threads
        providers = ",".join(p.replace("ExecutionProvider", "") for p in self.session.get_providers())
        return f"ort intra-op {n if n else f'auto({_physical_cores()})'} [{providers}]"

    def close(self) -> None:
        if self._torch:
            self.impl.close()  # torch's process-wide thread count back, CUDA graphs dropped

    # -- the torch model's size and cost --------------------------------------------------------------
    @property
    def weights_mb(self) -> float:
        return sum(t.numel() * t.element_size() for t in self.impl.model.state_dict().values()) / 2**20

    @property
    def params(self) -> int:
        model = self.impl.model
        if hasattr(model, "num_params"):
            try:
                return int(model.num_params(inference=True))
            except TypeError:
                pass
        return sum(p.numel() for p in model.parameters())

    def count_macs(self) -> int:
        """Multiply-accumulates of one forward pass at the manifest size: the model registry's profile,
        counted on the meta device (no memory, no compute)."""
        from ..models.profile import model_profile

        ck = self.impl.checkpoint
        size = tuple(self.seg.manifest["preprocess"]["size"])
        return int(model_profile(ck["model_name"], int(ck["num_classes"]), size,
                                 **dict(ck.get("model_kwargs") or {}))["macs"])


def torch_runner(checkpoint: str | Path | dict, manifest: dict, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, cuda_graph: bool = False, threads: int | None = None) -> BenchRunner:
    """A checkpoint run by the runtime's torch backend, with ``manifest``'s pre/postprocessing."""
    from ..runtime import Segmenter
    from ..runtime.backends.torch import TorchBackend

    impl = TorchBackend(checkpoint, device=device, precision=precision, channels_last=channels_last,
                        cuda_graph=cuda_graph, threads=threads)
    folder = Path(checkpoint).parent if not isinstance(checkpoint, dict) else Path(".")
    return BenchRunner(Segmenter(manifest, folder, impl, "torch", precision))


def make_runner(art: Artifact, backend: str, precision: str, opts: BenchOptions) -> BenchRunner:
    """The runner of one row: the source checkpoint for torch, the bundle's file for ort/trt."""
    if backend == "torch":
        if art.checkpoint is None:
            raise ApdError("the torch backend needs the source checkpoint; the bundle records none (pass the .pt)")
        if not Path(art.checkpoint).exists():
            raise ApdError(f"source checkpoint {art.checkpoint} not found (pass the .pt as an artifact)")
        return torch_runner(art.checkpoint, art.manifest, device=opts.device, precision=precision,
                            channels_last=opts.channels_last, cuda_graph=opts.cuda_graph, threads=opts.threads)
    import warnings

    from ..runtime import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CPU fallback is reported as the row's reason below
        seg = Segmenter.from_bundle(art.bundle, backend=backend, precision=precision, device=opts.device,
                                    verify=opts.verify, threads=opts.threads)
    runner = BenchRunner(seg)
    if backend == "ort" and opts.device.startswith("cuda") and runner.session is not None:
        if runner.session.get_providers() == ["CPUExecutionProvider"]:
            raise ApdError("onnxruntime has no working CUDA/TensorRT provider here (pip install onnxruntime-gpu); "
                           "a CPU run would be mislabelled as cuda")
    return runner


def preimport(backend: str) -> None:
    """Import a backend's libraries before the row's host-memory window: imports are not the model's memory."""
    import importlib

    for mod in {"torch": ("torch", "apd_edge.runtime.backends.torch", "apd_edge.checkpoint"), "ort": ("onnxruntime",),
                "trt": ("tensorrt", "apd_edge.runtime.backends.trt")}.get(backend, ()):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass  # the runner reports the missing package as the row's reason


def _physical_cores() -> int:
    try:
        from .machine import parse_cpuinfo

        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        return info.get("physical_cores") or info.get("logical_cpus") or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1
