"""``Segmenter``: one API over every backend, with pre/postprocessing defined by the bundle manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ApdError
from ..targets import BACKENDS
from .backends import list_backends
from .integrity import backend_io, check_model_io
from .manifest import find_file, load_manifest, verify_file
from .postprocess import postprocess, restore_logits
from .preprocess import PrepMeta, preprocess_from_manifest


class Segmenter:
    """Semantic segmentation from an exported bundle.

    ``predict(image) -> HxW label map`` and ``predict_logits(image) -> CxHxW float32`` on uint8 RGB
    images of any size; ``preprocess`` / ``infer`` / ``postprocess`` split the work for timing.
    """

    def __init__(self, manifest: dict, bundle_dir: Path, backend_impl, backend: str, precision: str):
        self.manifest = manifest
        self.bundle_dir = Path(bundle_dir)
        self.impl = backend_impl
        self.backend = backend
        self.precision = precision
        self.classes: list[str] = list(manifest["classes"])
        self.palette: list[list[int]] = [list(c) for c in manifest["palette"]]
        outs = {o["name"]: o["kind"] for o in manifest["outputs"]}
        have = set(getattr(backend_impl, "output_names", outs))
        self._logits_name = next((n for n, k in outs.items() if k == "logits" and n in have), None)
        self._labels_name = next((n for n, k in outs.items() if k == "labels" and n in have), None)
        if backend == "torch":
            self._logits_name, self._labels_name = "logits", None

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "ort", precision: str = "fp32", device: str = "cpu",
                    verify: bool = True, threads: int | None = None) -> "Segmenter":
        """Open a bundle folder. ``verify`` checks the sha256 of the model file before loading it."""
        if backend not in BACKENDS:
            from ..errors import unknown_name

            raise unknown_name("backend", backend, BACKENDS)
        ok, reason = list_backends()[backend]
        if not ok:
            raise ApdError(f"backend '{backend}' is not available: {reason}")
        bundle = Path(path)
        manifest = load_manifest(bundle)
        bundle = bundle if bundle.is_dir() else bundle.parent
        if backend == "ort":
            from .backends.ort import OrtBackend

            # on the CPU provider, INT8 runs the numerically identical uint8-activation graph (much faster there)
            entry = find_file(manifest, "onnx", precision, variant="cpu" if device == "cpu" else None)
            p = verify_file(bundle, entry) if verify else bundle / entry["path"]
            impl = OrtBackend(p, device=device, threads=threads)
        elif backend == "trt":
            from .backends.trt import TrtBackend

            entry = find_file(manifest, "engine", precision)
            p = verify_file(bundle, entry) if verify else bundle / entry["path"]
            impl = TrtBackend(p, entry.get("engine_meta"), device="cuda" if device == "cpu" else device)
        else:
            from .backends.torch import TorchBackend

            if precision != "fp32":
                raise ApdError(f"the torch backend runs the source checkpoint in fp32, not {precision}")
            src = manifest.get("source", {})
            if not src.get("checkpoint"):
                raise ApdError("the bundle records no source checkpoint; the torch backend needs one")
            impl = TorchBackend(src["checkpoint"], device=device, expected_sha256=src.get("sha256"))
        io = backend_io(impl)
        if io is not None:
            check_model_io(manifest, *io, what=f"{bundle / entry['path']}")
        return cls(manifest, bundle, impl, backend, precision)

    # -- the split used for timing -------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, PrepMeta]:
        return preprocess_from_manifest(image, self.manifest)

    def infer(self, x: np.ndarray, output: str = "auto") -> np.ndarray:
        """Compute only: the raw network output ('labels' when the bundle has them, else logits)."""
        name = self._pick(output)
        return self.impl.infer(x, [name])[name]

    def postprocess(self, raw: np.ndarray, meta: PrepMeta) -> np.ndarray:
        kind = "labels" if raw.ndim in (2, 3) and raw.dtype.kind in "iu" else "logits"
        if kind == "logits":
            self._check_finite(raw)
        return postprocess(raw, meta, kind)

    def _check_finite(self, logits: np.ndarray) -> None:
        """NaN/inf logits have no argmax worth showing: refuse them (one float64 sum: NaN and inf propagate)."""
        if not np.isfinite(np.sum(logits, dtype=np.float64)):
            raise ApdError(f"the model produced non-finite outputs (nan/inf) with backend {self.backend!r}, precision "
                           f"{self.precision!r}: the bundle's weights are broken or this precision overflows")

    # -- whole pipeline -------------------------------------------------------------------------------
    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB HxWx3 -> label map HxW (uint8 when the classes fit) at the image's size."""
        x, meta = self.preprocess(image)
        return self.postprocess(self.infer(x), meta)

    def predict_logits(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB HxWx3 -> float32 CxHxW logits at the image's size."""
        x, meta = self.preprocess(image)
        raw = self.infer(x, output="logits")
        self._check_finite(raw)
        return restore_logits(raw, meta)

    def _pick(self, output: str) -> str:
        if output == "auto":
            output = "labels" if self._labels_name else "logits"
        name = self._labels_name if output == "labels" else self._logits_name
        if name is None:
            raise ApdError(f"this bundle/backend gives no '{output}' output")
        return name

    def __repr__(self) -> str:
        return (f"Segmenter({self.manifest['name']!r}, backend={self.backend!r}, precision={self.precision!r}, "
                f"classes={len(self.classes)})")
