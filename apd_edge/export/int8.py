"""INT8 that keeps its accuracy: calibration method choice, per-layer sensitivity, mixed precision, a gate.

``build_int8`` turns a bundle's FP32 ONNX into its INT8 Q/DQ graph:

1. streaming calibration over training images (``calibrate.py``), cached in the bundle;
2. one Q/DQ graph per calibration method, scored on held-out val images; the method with the lowest
   error against the FP32 ONNX output wins;
3. sensitivity: each quantized activation tensor (one Q/DQ group: the tensor's rounding, shared by every
   layer that reads it) is left in float alone, and the error it removes is its sensitivity
   (``int8_sensitivity.json`` and ``int8_sensitivity.md``);
4. mixed precision: the most sensitive groups stay float (FP16 on TensorRT) until the mIoU drop against the
   FP32 ONNX on the parity images is within the target, or the float budget is spent;
5. the TensorRT graph is written with FP16 scales and FP16 float layers (``int8_fp16.py``; ``fp32`` keeps
   them FP32) and scored again; the gate: a model that misses the target is still written, marked
   ``target.met = false`` in the manifest;
6. a uint8-activation copy of the chosen graph for ONNX Runtime's CPU (``model_int8_cpu.onnx``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from ..errors import ApdError
from ..metrics import ConfusionMatrix
from ..runtime.postprocess import logits_to_labels
from .calibrate import CALIB_METHODS, HistogramCollector, cache_key, collect_histograms, tensors_to_calibrate
from .int8_fp16 import qdq_to_fp16
from .quantize import (OP_TYPES_TO_QUANTIZE, WEIGHTED_OPS, assert_qdq_conformance, classifier_nodes, float_tensors,
                       prepare_for_quantization, quantize_int8, quantized_tensors, to_cpu_variant)

CALIB_CACHE = "calibration.npz"
SENSITIVITY_JSON = "int8_sensitivity.json"
SENSITIVITY_MD = "int8_sensitivity.md"
INT8_FILE, INT8_CPU_FILE = "model_int8.onnx", "model_int8_cpu.onnx"
DEFAULT_TARGET_DROP = 0.5  # mIoU points against the FP32 ONNX on the parity images
DEFAULT_MAX_FLOAT = 0.25  # at most this fraction of the quantizable groups stays float
INT8_FLOAT_CHOICES = ("auto", "fp16", "fp32")  # what the TensorRT graph's non-INT8 layers compute in
FP16_TOLERANCE = 0.1  # mIoU points FP16 float layers may cost beyond FP32 ones under auto (about the noise)
SCHEMES = {"all": OP_TYPES_TO_QUANTIZE, "weighted": WEIGHTED_OPS}  # which ops get Q/DQ (see build_int8)
# op types whose outputs get no Q/DQ of their own: "weighted" rounds only what a weighted layer reads (ONNX
# Runtime's writer would also round every conv output; TensorRT fuses a conv's output into what follows)
SCHEME_EXCLUDE_OUTPUTS = {"all": (), "weighted": WEIGHTED_OPS}


@dataclass
class EvalSet:
    """Preprocessed images (NCHW float32), their preprocessing metas and masks (or None): what INT8 is scored on."""

    inputs: list[np.ndarray]
    metas: list[dict]
    masks: list[np.ndarray | None]
    num_classes: int
    scored_classes: int | None = None  # classes that count in mIoU (fewer than outputs: trailing extras such as void)
    ref_labels: list[np.ndarray] = field(default_factory=list)
    ref_logits_rms: float = 1.0

    @property
    def labelled(self) -> bool:
        return bool(self.masks) and all(m is not None for m in self.masks)


def _session(path: str | Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _miou(labels: Sequence[np.ndarray], masks: Sequence[np.ndarray], num_classes: int,
          scored: int | None) -> float:
    """mIoU in % (``metrics.ConfusionMatrix``); predictions of unscored trailing classes count as errors."""
    k = scored or num_classes
    cm = ConfusionMatrix(k, extra_classes=num_classes - k)
    for lab, mask in zip(labels, masks):
        cm.update(lab, mask)
    return 100.0 * cm.compute()["miou"]


class Scorer:
    """Runs candidate ONNX graphs on an EvalSet and compares them with the FP32 reference."""

    def __init__(self, fp32_path: str | Path, ev: EvalSet, threads: int | None = None, input_name: str = "input"):
        self.ev, self.threads, self.input_name = ev, threads, input_name
        sess = _session(fp32_path, threads)
        ev.ref_labels, sq = [], 0.0
        self.ref_logits: list[np.ndarray] = []
        for x, meta in zip(ev.inputs, ev.metas):
            out = sess.run(["logits"], {input_name: x})[0]
            self.ref_logits.append(out.astype(np.float16))  # half the memory; only used for an error ratio
            ev.ref_labels.append(logits_to_labels(out, meta))
            sq += float(np.mean(out.astype(np.float64) ** 2))
        ev.ref_logits_rms = float(np.sqrt(sq / max(1, len(ev.inputs))))
        self.fp32_miou = (_miou(ev.ref_labels, ev.masks, ev.num_classes, ev.scored_classes)
                          if ev.labelled else None)

    def score(self, path: str | Path, indices: Sequence[int] | None = None) -> dict:
        """Disagreement with FP32 (% pixels), relative logit RMS error, and mIoU (all images only)."""
        sess = _session(path, self.threads)
        idx = list(range(len(self.ev.inputs))) if indices is None else list(indices)
        dis = pix = 0
        err = 0.0
        labels = []
        for i in idx:
            out = sess.run(["logits"], {self.input_name: self.ev.inputs[i]})[0]
            lab = logits_to_labels(out, self.ev.metas[i])
            labels.append(lab)
            dis += int((lab != self.ev.ref_labels[i]).sum())
            pix += lab.size
            err += float(np.mean((out - self.ref_logits[i].astype(np.float32)) ** 2))
        res = {"disagreement": 100.0 * dis / max(1, pix),
               "rel_rmse": float(np.sqrt(err / max(1, len(idx)))) / max(self.ev.ref_logits_rms, 1e-12)}
        if indices is None and self.ev.labelled:
            res["miou"] = _miou(labels, self.ev.masks, self.ev.num_classes, self.ev.scored_classes)
            res["miou_drop"] = self.fp32_miou - res["miou"]
        return res


def _error(s: dict) -> tuple[float, float]:
    return (round(s["disagreement"], 6), s["rel_rmse"])


def sensitivity_table(rows: Sequence[dict], top: int = 30) -> str:
    """A Markdown table of the sensitivity ranking (most sensitive first)."""
    from ..tables import markdown_table

    def read_by(nodes: Sequence[str]) -> str:
        return f"`{nodes[0]}`" + (f" +{len(nodes) - 1}" if len(nodes) > 1 else "") if nodes else "-"

    body = [(r["rank"], f"`{r['tensor']}`", read_by(r["nodes"]), r["op"], f"{r['gain']:+.3f}",
             f"{r['disagreement']:.3f}", f"{r['rel_rmse']:.4f}")
            for r in rows[:top]]
    if len(rows) > top:
        body.append(("...", f"{len(rows) - top} more in {SENSITIVITY_JSON}", "", "", "", "", ""))
    return markdown_table(("rank", "tensor", "read by", "op", "error removed (% px)", "disagreement left (% px)",
                           "rel. logit RMSE left"), body, align="rlllrrr")


def build_int8(fp32_path: str | Path, out_dir: str | Path, *, calib_inputs: Callable[[], Iterable[np.ndarray]],
               calib_desc: dict, ev: EvalSet, method: str = "auto", target_drop: float | None = DEFAULT_TARGET_DROP,
               sensitivity: bool | str = True, sensitivity_images: int = 8, max_float: float = DEFAULT_MAX_FLOAT,
               nodes_to_exclude: Sequence[str] = (), percentile: float = 99.999, threads: int | None = None,
               cpu_variant: bool = True, scheme: str = "auto", float_precision: str = "auto",
               range_overrides: Callable[[onnx.ModelProto], dict[str, float]] | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict:
    """Write ``model_int8.onnx`` (+ ``model_int8_cpu.onnx``) into ``out_dir``; returns the manifest section.

    ``calib_inputs`` is called (at most once) for a fresh iterator of preprocessed calibration inputs;
    ``calib_desc`` identifies them in the cache key. ``method`` is one of ``calibrate.CALIB_METHODS`` or
    ``auto`` (each is tried, the lowest measured error wins). ``target_drop`` is the largest mIoU drop (points)
    against the FP32 ONNX that plain INT8 may have before groups are kept in float (None: no mixed precision).
    ``range_overrides(prepared graph) -> {tensor: amax}`` replaces calibrated ranges (a QAT checkpoint's
    frozen activation ranges) whatever the method. ``sensitivity="auto"`` ranks the groups only when plain
    INT8 misses the target (mixed precision needs the ranking). ``float_precision="fp16"`` writes the TensorRT
    graph with FP16 scales and FP16 float layers (``int8_fp16.qdq_to_fp16``): what is not INT8 runs in FP16
    on TensorRT; the search runs on the FP32-scale graphs and the FP16 graph is scored again. ``"auto"``
    keeps FP16 unless it loses the target FP32 float layers meet or costs more than ``FP16_TOLERANCE``.
    """
    if float_precision not in INT8_FLOAT_CHOICES:
        raise ApdError(f"unknown INT8 float precision {float_precision!r}; choose {', '.join(INT8_FLOAT_CHOICES)}")
    if scheme != "auto" and scheme not in SCHEMES:
        raise ApdError(f"unknown quantization scheme {scheme!r}; choose auto, {', '.join(SCHEMES)}")
    if method != "auto" and method not in CALIB_METHODS:
        raise ApdError(f"unknown calibration method {method!r}; choose auto or one of {', '.join(CALIB_METHODS)}")
    if not 0.0 <= max_float <= 1.0:
        raise ApdError(f"max_float must be a fraction in [0, 1], got {max_float}")
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="apd_int8_") as tmpd:
        tmp = Path(tmpd)
        pre_path = tmp / "pre.onnx"
        pre = prepare_for_quantization(fp32_path, pre_path)
        names = tensors_to_calibrate(pre, OP_TYPES_TO_QUANTIZE)

        # 1. calibration (cached)
        key = cache_key(fp32_path, names, calib_desc, 2048)
        coll = HistogramCollector.load(out_dir / CALIB_CACHE, key)
        cache_hit = coll is not None
        t0 = time.perf_counter()
        if coll is None:
            log(f"calibrating INT8: {len(names)} tensors, streaming histograms")

            def tick(n: int) -> None:
                if n % 32 == 0:
                    log(f"  calibration: {n} images")

            coll = collect_histograms(pre, names, calib_inputs(), threads=threads, progress=tick)
            coll.save(out_dir / CALIB_CACHE, key)
        else:
            log(f"calibrating INT8: cached histograms of {coll.images} images ({CALIB_CACHE})")
        calib_s = time.perf_counter() - t0

        known = set(names)
        overrides = {k: float(v) for k, v in (range_overrides(pre) if range_overrides else {}).items() if k in known}

        calibrated: dict[str, dict[str, float]] = {}

        def ranges_for(m: str) -> dict[str, float]:
            if m not in calibrated:  # the threshold searches run once per method, whatever the schemes
                calibrated[m] = coll.ranges(m, percentile)
            return {**calibrated[m], **overrides}

        cls_nodes = classifier_nodes(pre)
        base_excl = list(dict.fromkeys(list(nodes_to_exclude) + cls_nodes))
        for n in nodes_to_exclude:
            if n not in {node.name for node in pre.graph.node}:
                raise ApdError(f"--exclude-node {n!r} is not a node of the exported graph")
        scorer = Scorer(fp32_path, ev, threads)
        n_ev = len(ev.inputs)
        k = min(sensitivity_images, n_ev)
        sens_idx = sorted({int(round(v)) for v in np.linspace(0, n_ev - 1, k)}) if k else []

        def make(ranges: dict, excl: Sequence[str], path: Path, sc: str) -> Path:
            quantize_int8(pre_path, path, ranges, nodes_to_exclude=list(excl), op_types=SCHEMES[sc], check=False,
                          exclude_outputs=SCHEME_EXCLUDE_OUTPUTS[sc])
            return path

        def variant(floated: Sequence[str], path: Path) -> Path:
            onnx.save(float_tensors(full_model, pre, floated), str(path))
            return path

        # 2. calibration method and quantization scheme by measured error. "all" also quantizes the
        # activations between layers (Add, Concat, pools, Relu: fewer float ops on TensorRT); "weighted"
        # quantizes only the inputs of weighted layers (Conv, ConvTranspose, Gemm, MatMul), what NVIDIA's
        # Q/DQ guidance starts from. Networks with many concatenations (ESPNet) lose much less with it.
        methods = list(CALIB_METHODS) if method == "auto" else [method]
        schemes = list(SCHEMES) if scheme == "auto" else [scheme]
        method_scores = {}
        for sc in schemes:
            for m in methods:
                key = m if len(schemes) == 1 else f"{sc}/{m}"
                p = make(ranges_for(m), base_excl, tmp / f"q_{sc}_{m}.onnx", sc)
                method_scores[key] = {"scheme": sc, "method": m, **scorer.score(p, sens_idx)}
                log(f"  {key:<18} disagreement {method_scores[key]['disagreement']:.3f}% "
                    f"rel. logit RMSE {method_scores[key]['rel_rmse']:.4f}")
        best = min(method_scores, key=lambda k: _error(method_scores[k]))
        chosen, chosen_scheme = method_scores[best]["method"], method_scores[best]["scheme"]
        ranges = ranges_for(chosen)
        full_path = tmp / f"q_{chosen_scheme}_{chosen}.onnx"
        full_model = onnx.load(str(full_path))
        full = scorer.score(full_path)
        base_sens = method_scores[best]
        log(f"INT8 ({chosen} calibration, {chosen_scheme} scheme): " + _describe(full))

        # 3. sensitivity: leave one group (a quantized tensor, with every layer reading it) in float at a time
        readers = quantized_tensors(full_model)
        groups = list(readers)
        op_of = {n.name: n.op_type for n in pre.graph.node}
        ranking: list[dict] = []
        t0 = time.perf_counter()
        plain_misses = target_drop is not None and full.get("miou_drop", 0.0) > target_drop
        if (sensitivity is True or (sensitivity == "auto" and plain_misses)) and sens_idx:
            log(f"sensitivity: {len(groups)} groups on {len(sens_idx)} held-out val images")
            for i, g in enumerate(groups):
                s = scorer.score(variant([g], tmp / "loo.onnx"), sens_idx)
                ranking.append({"tensor": g, "nodes": readers[g],
                                "op": "/".join(sorted({op_of.get(r, "?") for r in readers[g]})),
                                "gain": base_sens["disagreement"] - s["disagreement"],
                                "gain_rmse": base_sens["rel_rmse"] - s["rel_rmse"], **s})
                if (i + 1) % 20 == 0:
                    log(f"  sensitivity: {i + 1}/{len(groups)}")
            ranking.sort(key=lambda r: (-r["gain"], -r["gain_rmse"]))
            for r, row in enumerate(ranking, 1):
                row["rank"] = r
        sens_s = time.perf_counter() - t0

        # 4. mixed precision until the target holds
        floated: list[str] = []
        final_path, final = full_path, full
        budget = int(max_float * len(groups))
        met = None
        if target_drop is not None and "miou_drop" in full:
            met = full["miou_drop"] <= target_drop
            if not met and ranking and budget > 0:
                order = [r["tensor"] for r in ranking if r["gain"] > 0 or r["gain_rmse"] > 0][:budget]
                tried: dict[int, dict] = {}

                def trial(n: int) -> dict:
                    if n not in tried:
                        p = variant(order[:n], tmp / f"mp_{n}.onnx")
                        tried[n] = {"path": p, **scorer.score(p)}
                        log(f"  mixed precision: {n} float group(s): " + _describe(tried[n]))
                    return tried[n]

                lo, n = 0, 1
                while n <= len(order) and trial(n)["miou_drop"] > target_drop:
                    lo, n = n, n * 2
                if n > len(order) and order:
                    n = len(order)
                    if trial(n)["miou_drop"] > target_drop:
                        n = -1
                if n > 0:  # smallest count in (lo, n] that meets the target
                    hi = n
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        if trial(mid)["miou_drop"] <= target_drop:
                            hi = mid
                        else:
                            lo = mid
                    best_n, met = hi, True
                else:  # the target is out of reach: keep the best drop seen
                    best_n = min(tried, key=lambda c: (tried[c]["miou_drop"], c)) if tried else 0
                    if best_n and tried[best_n]["miou_drop"] >= full["miou_drop"]:
                        best_n = 0
                if best_n:
                    floated = order[:best_n]
                    final_path = tried[best_n]["path"]
                    final = {k: v for k, v in tried[best_n].items() if k != "path"}

        floated_set = {r for t in floated for r in readers[t]}
        float_nodes = [n.name for n in pre.graph.node if n.name in floated_set]

        # 5. write the chosen graph (TensorRT rules checked) and its CPU twin
        dst = out_dir / INT8_FILE
        fp16_info, used = None, "fp32"
        if float_precision in ("fp16", "auto"):
            fp16_path = tmp / "int8_fp16.onnx"
            fp16_info = qdq_to_fp16(final_path, fp16_path)
            s16 = scorer.score(fp16_path)
            fp16_info["score"] = s16
            log("INT8 with FP16 float layers: " + _describe(s16))
            if float_precision == "fp16" or auto_keeps_fp16(s16.get("miou_drop"), final.get("miou_drop"), target_drop):
                used = "fp16"
                fp16_info["fp32_scales"] = final
                final = s16
                if met is not None:
                    met = final["miou_drop"] <= target_drop
            else:
                log(f"  FP16 float layers cost {s16['miou_drop'] - final['miou_drop']:.2f} mIoU: the TensorRT graph "
                    "keeps FP32 float layers (--int8-float fp16 forces FP16)")
        shutil.copyfile(fp16_path if used == "fp16" else final_path, dst)
        qdq_report = assert_qdq_conformance(dst, classifier=cls_nodes[:1] or None)
        cpu = None
        if cpu_variant:  # from the FP32-scale graph: ONNX Runtime's CPU kernels have no FP16
            cpu = to_cpu_variant(final_path, out_dir / INT8_CPU_FILE, output_ranges=ranges)
            twin = scorer.score(out_dir / INT8_CPU_FILE, sens_idx[:4] or [0])
            same = scorer.score(dst, sens_idx[:4] or [0])
            cpu["disagreement_vs_fp32"] = twin["disagreement"]
            cpu["disagreement_vs_fp32_of_trt_graph"] = same["disagreement"]

    if ranking:
        _write_sensitivity(out_dir, ranking, chosen, sens_idx, base_sens)
    section = {
        "method": chosen, "method_choice": "auto" if method == "auto" else "fixed",
        "scheme": chosen_scheme, "scheme_op_types": list(SCHEMES[chosen_scheme]),
        "method_scores": method_scores, "percentile": percentile if chosen == "percentile" else None,
        "calib_images": coll.images, "calibration_cache": CALIB_CACHE, "calibration_cache_hit": cache_hit,
        "calibration_seconds": round(calib_s, 2), "calibrated_tensors": len(names),
        "range_overrides": len(overrides),
        "per_channel": True, "symmetric": True, "quantize_bias": False,
        "classifier_nodes": cls_nodes, "excluded_by_user": list(nodes_to_exclude),
        "groups": len(groups), "group_kind": "quantized activation tensor", "float_tensors": floated,
        "float_nodes": float_nodes, "float_layers": len(float_nodes),
        "float_precision": used, "float_precision_choice": float_precision, "fp16": fp16_info,
        "plain": full, "final": final,
        "target": {"metric": "miou_drop_vs_fp32_onnx", "max_drop": target_drop, "met": met,
                   "drop": final.get("miou_drop"), "images": len(ev.inputs),
                   "reason": None if met is not None else
                   ("no labelled images to measure mIoU" if target_drop is not None else "no target set")},
        "sensitivity": ({"file": SENSITIVITY_JSON, "table": SENSITIVITY_MD, "images": len(sens_idx),
                         "seconds": round(sens_s, 1)} if ranking else None),
        "cpu_variant": ({"file": INT8_CPU_FILE, **cpu} if cpu else None),
        "qdq_check": qdq_report, "seconds": round(time.perf_counter() - t_start, 1),
    }
    return section


def auto_keeps_fp16(drop_fp16: float | None, drop_fp32: float | None, target: float | None) -> bool:
    """``--int8-float auto``: FP16 float layers unless they lose the target that FP32 ones meet, or cost more
    than ``FP16_TOLERANCE`` mIoU points beyond them (drops in points against the FP32 ONNX)."""
    if drop_fp16 is None or drop_fp32 is None:
        return True  # nothing measured (no labels): FP16, the fast graph
    if target is not None and drop_fp32 <= target < drop_fp16:
        return False
    return drop_fp16 - drop_fp32 <= FP16_TOLERANCE


def _describe(s: dict) -> str:
    txt = f"disagreement {s['disagreement']:.3f}% rel. logit RMSE {s['rel_rmse']:.4f}"
    if "miou_drop" in s:
        txt += f", mIoU {s['miou']:.2f} (drop {s['miou_drop']:+.2f} vs FP32 ONNX)"
    return txt


def _write_sensitivity(out_dir: Path, ranking: list[dict], method: str, sens_idx: Sequence[int], base: dict) -> None:
    import json

    doc = {"metric": "argmax disagreement with the FP32 ONNX (% of pixels) on held-out val images",
           "how": "each group (a quantized activation tensor and the layers reading it) is left in float alone; "
                  "'gain' is the disagreement it removes",
           "calibration": method, "images": list(sens_idx), "all_int8": base, "ranking": ranking}
    (out_dir / SENSITIVITY_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    head = (f"# INT8 sensitivity\n\nCalibration: {method}. All groups INT8: disagreement "
            f"{base['disagreement']:.3f}% of pixels, relative logit RMSE {base['rel_rmse']:.4f}, on "
            f"{len(sens_idx)} held-out val images. Each row leaves one quantized tensor in float (every layer "
            "that reads it then runs in float); 'error removed' is how much of the disagreement that tensor's "
            "rounding causes.\n\n")
    (out_dir / SENSITIVITY_MD).write_text(head + sensitivity_table(ranking) + "\n")

