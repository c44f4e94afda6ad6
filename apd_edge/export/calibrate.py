"""Streaming INT8 calibration: one pass over the images, memory bounded by one image's activations.

For every tensor that the Q/DQ writer may quantize we keep a running histogram of |x| with a fixed number
of bins plus the exact maximum. When a larger value arrives the histogram's range doubles and adjacent bins
merge pairwise, so no value is dropped and memory never grows with the number of images (unlike
ONNX Runtime's calibrators, which keep every activation). Ranges for any method (minmax, percentile,
entropy, mse) are computed from the histograms afterwards; the histograms are cached in the bundle
(``calibration.npz``) so a re-export or another method does not run the images again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from ..errors import ApdError

CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
# values per tensor per image that enter the histogram (the max is always exact): a strided sample keeps
# the per-image cost flat for large feature maps without biasing the distribution
MAX_SAMPLES = 1 << 16
_INT8_LEVELS = 127  # symmetric int8: [-127 * s, 127 * s] (TensorRT drops -128)


def tensors_to_calibrate(model: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    """Float, non-constant inputs/outputs of nodes of ``op_types`` (the rule ONNX Runtime's calibrators use)."""
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({o.name: o for o in model.graph.output})
    infos.update({i.name: i for i in model.graph.input})
    inits = {i.name for i in model.graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for t in list(node.input) + list(node.output):
            vi = infos.get(t)
            if (t and t not in inits and t not in names and vi is not None and vi.type.HasField("tensor_type")
                    and vi.type.tensor_type.elem_type in floats):
                names.append(t)
    return names


class HistogramCollector:
    """Running |x| histograms (``bins`` bins over [0, hi), hi a power of two) and exact max per tensor."""

    def __init__(self, names: Sequence[str], bins: int = DEFAULT_BINS, max_samples: int = MAX_SAMPLES):
        if bins < 256 or bins & (bins - 1):
            raise ApdError(f"calibration bins must be a power of two >= 256, got {bins}")
        self.names = list(names)
        self.bins = bins
        self.max_samples = max_samples
        self.hist = {n: np.zeros(bins, np.int64) for n in self.names}
        self.hi = {n: 0.0 for n in self.names}
        self.amax_seen = {n: 0.0 for n in self.names}
        self.images = 0

    def update(self, name: str, arr: np.ndarray) -> None:
        a = np.asarray(arr, dtype=np.float32).ravel()
        if a.size == 0:
            return
        m = float(max(a.max(), -a.min()))
        if not np.isfinite(m):
            raise ApdError(f"calibration: tensor {name!r} holds non-finite values (inf/NaN) on a calibration image")
        self.amax_seen[name] = max(self.amax_seen[name], m)
        if a.size > self.max_samples:
            step = -(-a.size // self.max_samples)
            a = a[(self.images * 7919) % step::step]  # the offset moves with the image: no fixed aliasing
        v = np.abs(a)
        hist = self.hist[name]
        if m > 0:
            hi = self.hi[name]
            if hi == 0.0:
                hi = float(2.0 ** np.ceil(np.log2(m)))
                if hi <= m:
                    hi *= 2
            while hi <= m:  # double the range: merge bin pairs, the upper half starts empty
                merged = hist.reshape(-1, 2).sum(1)
                hist[:] = 0
                hist[: len(merged)] = merged
                hi *= 2
            self.hi[name] = hi
            idx = np.minimum((v * np.float32(self.bins / hi)).astype(np.int32), self.bins - 1)
            hist += np.bincount(idx, minlength=self.bins)
        else:
            hist[0] += v.size

    def add_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        for n, arr in outputs.items():
            self.update(n, arr)
        self.images += 1

    # ----------------------------------------------------------------------------------------------
    def amax(self, name: str, method: str, percentile: float = 99.999) -> float:
        """Symmetric range (the |x| clipped to) of ``name`` for ``method``."""
        hist, hi, mx = self.hist[name], self.hi[name], self.amax_seen[name]
        if mx == 0.0 or hist.sum() == 0:
            return 1e-8  # an all-zero tensor: any scale reproduces it
        width = hi / self.bins
        if method == "minmax":
            return mx
        if method == "percentile":
            cdf = np.cumsum(hist) / hist.sum()
            k = int(np.searchsorted(cdf, percentile / 100.0))
            return float(min(mx, (k + 1) * width))
        if method == "entropy":
            return float(min(mx, _kl_threshold(hist) * width))
        if method == "mse":
            return float(min(mx, _mse_threshold(hist, width)))
        raise ApdError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")

    def ranges(self, method: str, percentile: float = 99.999) -> dict[str, float]:
        return {n: self.amax(n, method, percentile) for n in self.names}

    # ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path, key: str) -> None:
        """Write the histograms atomically (``.npz``) with ``key`` identifying model + images + preprocessing."""
        path = Path(path)
        meta = {"key": key, "bins": self.bins, "images": self.images, "names": self.names,
                "hi": [self.hi[n] for n in self.names], "amax": [self.amax_seen[n] for n in self.names]}
        hist = np.stack([self.hist[n] for n in self.names]) if self.names else np.zeros((0, self.bins), np.int64)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            np.savez_compressed(f, hist=hist, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
            tmp = f.name
        Path(tmp).replace(path)

    @classmethod
    def load(cls, path: str | Path, key: str | None = None) -> "HistogramCollector | None":
        """The cached collector at ``path`` if it exists and (when given) its key matches; else None."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                hist = z["hist"]
        except Exception:  # a damaged cache is just a cache miss
            return None
        if key is not None and meta.get("key") != key:
            return None
        c = cls(meta["names"], bins=int(meta["bins"]))
        for i, n in enumerate(c.names):
            c.hist[n] = hist[i].astype(np.int64)
            c.hi[n] = float(meta["hi"][i])
            c.amax_seen[n] = float(meta["amax"][i])
        c.images = int(meta["images"])
        return c


def _kl_threshold(hist: np.ndarray, levels: int = _INT8_LEVELS + 1, stride: int = 16) -> int:
    """TensorRT-style entropy calibration on a |x| histogram: the bin count i minimising KL(P_i || Q_i).

    P_i is the histogram cut at bin i with the tail folded into its last bin; Q_i is P_i quantized to
    ``levels`` levels and expanded back over the bins that were non-zero.
    """
    hist = hist.astype(np.float64)
    nb = len(hist)
    best_i, best_kl = nb, np.inf
    start = levels
    for i in list(range(start, nb, stride)) + [nb]:
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        if not nz.any():
            continue
        edges = np.linspace(0, i, levels + 1).round().astype(int)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        counts = np.add.reduceat(nz.astype(np.float64), edges[:-1])
        per_bin = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        q = np.repeat(per_bin, np.diff(edges)) * nz
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p[nz] / ps, q[nz] / qs
        # bins where Q is empty but P is not (the folded tail, typically) get a small mass, as in the
        # reference implementation's smoothing; otherwise every clipping candidate scores infinity
        qn = np.where(qn > 0, qn, 1e-4)
        qn /= qn.sum()
        kl = float(np.sum(pn * np.log(pn / qn)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def _mse_threshold(hist: np.ndarray, width: float, n_candidates: int = 256) -> float:
    """The clip value minimising the expected int8 error: rounding (s^2 / 12) inside, (|x| - t)^2 outside.

    All candidates at once from suffix sums: sum over bins above t of h (c - t)^2 = S2 - 2 t S1 + t^2 S0.
    """
    nb = len(hist)
    centers = (np.arange(nb) + 0.5) * width
    cands = np.unique(np.linspace(nb / n_candidates, nb, n_candidates).round().astype(int)) * width
    h = hist.astype(np.float64)
    # suffix sums with a trailing 0: S[k] = sum over bins >= k
    s0 = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    s1 = np.concatenate([np.cumsum((h * centers)[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum((h * centers ** 2)[::-1])[::-1], [0.0]])
    first_out = np.searchsorted(centers, cands, side="right")  # first bin whose center is > t
    inside = s0[0] - s0[first_out]
    step = cands / _INT8_LEVELS
    err = inside * step * step / 12.0 + (s2[first_out] - 2 * cands * s1[first_out] + cands ** 2 * s0[first_out])
    return float(cands[int(np.argmin(err))])


def augmented_model(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs include ``names`` (for reading activations)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    infos = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.input)}
    for n in names:
        if n in have:
            continue
        vi = infos.get(n)
        m.graph.output.append(vi if vi is not None else onnx.helper.make_empty_tensor_value_info(n))
    return m


def collect_histograms(model: onnx.ModelProto, names: Sequence[str], inputs: Iterable[np.ndarray], *,
                       input_name: str = "input", bins: int = DEFAULT_BINS, threads: int | None = None,
                       progress: Callable[[int], None] | None = None) -> HistogramCollector:
    """Run ``inputs`` (preprocessed NCHW float arrays) through ``model`` once, accumulating histograms."""
    import onnxruntime as ort

    aug = augmented_model(model, names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    # no graph fusions: the tensors we read must exist as they are in the model being quantized
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(aug.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    coll = HistogramCollector(names, bins=bins)
    for x in inputs:
        outs = sess.run(list(names), {input_name: np.ascontiguousarray(x, dtype=np.float32)})
        coll.add_outputs(dict(zip(names, outs)))
        del outs
        if progress:
            progress(coll.images)
    if coll.images == 0:
        raise ApdError("INT8 calibration got no images")
    return coll


def cache_key(model_path: str | Path, names: Sequence[str], images_desc: dict, bins: int) -> str:
    """Identifies a calibration: the FP32 graph, the tensors, which images and how they were preprocessed."""
    h = hashlib.sha256()
    h.update(Path(model_path).read_bytes())
    h.update(json.dumps({"names": list(names), "images": images_desc, "bins": bins, "samples": MAX_SAMPLES},
                        sort_keys=True).encode())
    return h.hexdigest()
