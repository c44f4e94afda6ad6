"""``export_bundle``: checkpoint -> self-describing bundle folder (ONNX FP32/FP16/INT8, engines, manifest).

Format: see ``export/README.md``. Calibration and parity use real images of the checkpoint's recipe
dataset, preprocessed exactly as the runtime does (``manifest["preprocess"]``).
"""

from __future__ import annotations

import datetime
import math
import platform
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..errors import ApdError
from ..runtime.backends.ort import OrtBackend
from ..runtime.manifest import FORMAT_NAME, FORMAT_VERSION, file_entry, save_manifest, sha256_file
from ..runtime.preprocess import preprocess_image
from .parity import FP32_MIN_AGREEMENT, parity_table, pick_indices, run_parity

ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
PRECISIONS = tuple(ONNX_FILES)
DEFAULT_PARITY_IMAGES = 128  # covers CamVid val (101) whole; larger val sets are sampled evenly


def resolve_checkpoint(source: str | Path | None) -> Path:
    """A checkpoint file from a file, a run folder (best.pt, else last.pt) or None (runs/latest)."""
    p = Path(source) if source is not None else Path("runs") / "latest"
    if p.is_dir():
        for cand in ("best.pt", "last.pt"):
            if (p / cand).is_file():
                return (p / cand).resolve()
        raise ApdError(f"no best.pt or last.pt in run folder {p}")
    if not p.is_file():
        hint = " (train a model first, or pass a checkpoint)" if source is None else ""
        raise ApdError(f"checkpoint not found: {p}{hint}")
    return p.resolve()


def _round_up32(v: int) -> int:
    return int(math.ceil(v / 32) * 32)


def choose_input(image_hw: tuple[int, int] | None, input_size: Sequence[int] | None,
                 recipe_size: Sequence[int] | None, crop: Sequence[int] | None) -> tuple[list[int], str]:
    """(input size [H, W], preprocess mode). Default: the image size rounded up to /32, padded (CamVid
    360x480 -> 384x480, pad and crop back). Images whose aspect differs >10% from the input are resized."""
    size = input_size or recipe_size
    if size is None:
        if image_hw is not None:
            size = [_round_up32(image_hw[0]), _round_up32(image_hw[1])]
        elif crop is not None:
            size = list(crop)
        else:
            raise ApdError("cannot tell the input size: pass --size HxW or set export.input_size in the recipe")
    size = [int(s) for s in size]
    if len(size) != 2 or any(s < 32 or s % 32 for s in size):
        raise ApdError(f"input size {size} must be two multiples of 32 (>= 32), e.g. --size 384x480")
    mode = "pad"
    if image_hw is not None:
        h, w = image_hw
        fits = h <= size[0] and w <= size[1]
        if not fits and abs((h / w) / (size[0] / size[1]) - 1) > 0.1:
            mode = "resize"
    return size, mode


def _versions(opset: int) -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"apd_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": opset, "numpy": np.__version__,
            "python": platform.python_version()}


def _open_dataset(recipe, split: str, purpose: str, required: bool):
    from ..data import build_dataset

    try:
        ds = build_dataset(recipe.data, split)
        if len(ds) == 0:
            raise ApdError(f"split '{split}' is empty")
        return ds
    except ApdError as exc:
        if required:
            raise ApdError(f"{purpose} needs real images of dataset '{recipe.data.dataset}' but split '{split}' "
                           f"cannot be read at data.root={recipe.data.root!r} ({exc}); pass --data-root DIR") from None
        return None


def _images(ds, indices: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    for i in indices:
        img, mask = ds[i]
        yield img, mask


def export_bundle(source: str | Path | None = None, out_dir: str | Path | None = None, *, name: str | None = None,
                  input_size: Sequence[int] | None = None, precisions: Sequence[str] = ("fp32",),
                  dynamic: bool = False, argmax: bool = False, calib_images: int = 128,
                  calib_method: str = "percentile", trt: bool = False, data_root: str | Path | None = None,
                  parity_images: int = DEFAULT_PARITY_IMAGES, opset: int | None = None,
                  nodes_to_exclude: Sequence[str] | None = None, workspace_gb: float | None = None,
                  preprocess: str | None = None, progress: bool = True, qat_ranges: bool = True) -> Path:
    """Export a checkpoint (file, run folder, or ``runs/latest``) into a bundle folder; returns its path.

    Fails with ApdError on bad input, when INT8 calibration has no real dataset, and when FP32 parity
    (argmax agreement with PyTorch) is under 99.9 %. A QAT checkpoint's activation ranges replace the
    calibrated ones of the conv inputs it quantized (``qat_ranges``).
    """
    from ..config import recipe_from_dict
    from ..engine.checkpoint import model_from_checkpoint
    from .fp16 import convert_fp16
    from .onnx import export_onnx
    from .quantize import CALIB_METHODS, ImageCalibrationReader, quantize_int8

    log: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        if p not in PRECISIONS:
            raise ApdError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # every other precision derives from the FP32 graph
    if calib_method not in CALIB_METHODS:
        raise ApdError(f"unknown calibration method {calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if calib_images < 1:
        raise ApdError(f"calib_images must be >= 1, got {calib_images}")
    if preprocess not in (None, "pad", "resize"):
        raise ApdError(f"unknown preprocess mode {preprocess!r} (pad or resize)")
    if trt:
        from ..runtime.backends.trt import import_cudart, import_tensorrt

        import_tensorrt(), import_cudart()  # fail now, with the install hint, not after minutes of work

    ckpt_path = resolve_checkpoint(source)
    log(f"loading {ckpt_path}")
    model, ckpt = model_from_checkpoint(ckpt_path)
    model.eval()
    raw_recipe = dict(ckpt.get("recipe") or {})
    recipe = recipe_from_dict(raw_recipe)
    if data_root is not None:
        recipe.data.root = str(data_root)
    opset = int(opset or recipe.export.opset)
    workspace_gb = float(workspace_gb or recipe.export.workspace_gb)
    name = name or recipe.name or ckpt_path.parent.name
    out = Path(out_dir) if out_dir is not None else Path("export") / name

    if "data" in raw_recipe:
        val_ds = _open_dataset(recipe, recipe.data.val_split, "parity", required=False)
        train_ds = _open_dataset(recipe, recipe.data.train_split, "INT8 calibration", required="int8" in precisions)
    elif "int8" in precisions:  # a recipe-less checkpoint: its dataset is unknown, never guess one
        raise ApdError(f"INT8 calibration needs real images but {ckpt_path} records no recipe data section "
                       "(data.root unknown); export without --int8 or use a checkpoint from `apd-edge train`")
    else:
        val_ds = train_ds = None
    probe_ds = val_ds if val_ds is not None else train_ds
    image_hw = tuple(probe_ds[0][0].shape[:2]) if probe_ds is not None else None
    size, mode = choose_input(image_hw, input_size, recipe.export.input_size, recipe.train.crop)
    mode = preprocess or mode
    num_classes = int(ckpt["num_classes"])
    classes = list(ckpt.get("classes") or (probe_ds.class_names if probe_ds else [f"class_{i}" for i in range(num_classes)]))
    palette = ckpt.get("palette") or (probe_ds.palette if probe_ds else None)
    if palette is None:
        rng = np.random.default_rng(0)
        palette = rng.integers(0, 256, (num_classes, 3)).tolist()
    palette = [[int(c) for c in rgb] for rgb in palette]
    mean = [float(v) for v in (ckpt.get("mean") or recipe.data.mean)]
    std = [float(v) for v in (ckpt.get("std") or recipe.data.std)]
    prep = {"mode": mode, "size": size, "pad_fill": "reflect", "mean": mean, "std": std, "color": "RGB",
            "scale": 1 / 255, "layout": "NCHW"}

    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.onnx")) + list(out.glob("model_*.engine")):  # ours, from an older export
        stale.unlink()

    log(f"exporting {ckpt.get('model_name')} at {size[0]}x{size[1]} ({mode}) opset {opset} -> {out}")
    io = export_onnx(model, out / ONNX_FILES["fp32"], tuple(size), opset=opset, dynamic=dynamic, argmax=argmax)
    if io["num_classes"] != num_classes:
        raise ApdError(f"model outputs {io['num_classes']} classes, checkpoint says {num_classes}")
    files = [file_entry(out, ONNX_FILES["fp32"], "onnx", "fp32")]
    extra: dict = {}
    if "fp16" in precisions:
        log("converting to FP16 (FP32 I/O, sensitive ops in FP32)")
        extra["fp16"] = convert_fp16(out / ONNX_FILES["fp32"], out / ONNX_FILES["fp16"])
        files.append(file_entry(out, ONNX_FILES["fp16"], "onnx", "fp16"))
    if "int8" in precisions:
        idx = pick_indices(len(train_ds), calib_images)
        log(f"calibrating INT8 ({calib_method}) on {len(idx)} '{recipe.data.train_split}' images")
        reader = ImageCalibrationReader(
            (img for img, _ in _images(train_ds, idx)),
            lambda im: preprocess_image(im, tuple(size), mean, std, mode, prep["pad_fill"])[0])
        overrides = None
        if qat_ranges and ckpt.get("qat"):
            from .qat import qat_range_overrides

            overrides = qat_range_overrides(ckpt["qat"])
            log("using the QAT checkpoint's activation ranges for the conv inputs it quantized")
        extra["int8"] = quantize_int8(out / ONNX_FILES["fp32"], out / ONNX_FILES["int8"], reader, method=calib_method,
                                      nodes_to_exclude=nodes_to_exclude, range_overrides=overrides)
        files.append(file_entry(out, ONNX_FILES["int8"], "onnx", "int8"))

    # parity on real val images (or, without a dataset, a fixed pseudo-random image: max diff and agreement only)
    if val_ds is not None:
        idx = pick_indices(len(val_ds), parity_images)
        images = list(_images(val_ds, idx)) if len(idx) <= 16 else _images(val_ds, idx)
        parity_src = f"{recipe.data.dataset}:{recipe.data.val_split} ({len(idx)} images)"
    else:
        rng = np.random.default_rng(0)
        images = [(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8), None)]
        parity_src = "no dataset reachable: one fixed random image (no mIoU)"
    log(f"parity: ONNX Runtime CPU vs PyTorch on {parity_src}")
    backends = {f["precision"]: OrtBackend(out / f["path"], device="cpu") for f in files}
    parity = run_parity(model, backends, images, prep, num_classes, log=log)
    log(parity_table(parity))

    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name,
        "model": {"name": ckpt.get("model_name"), "kwargs": ckpt.get("model_kwargs", {}), "step": ckpt.get("step"),
                  "best_miou": ckpt.get("best_miou")},
        "num_classes": num_classes, "classes": classes, "palette": palette, "mean": mean, "std": std,
        "input": io["input"], "outputs": io["outputs"], "preprocess": prep,
        "output_kind": "labels" if argmax else "logits", "dynamic": bool(dynamic),
        "files": files,
        "source": {"checkpoint": str(ckpt_path), "sha256": sha256_file(ckpt_path),
                   "dataset": recipe.data.dataset, "data_root": recipe.data.root,
                   # options select the data itself (synthetic size and count, folder formats): bench needs them
                   "data_options": dict(recipe.data.options), "val_split": recipe.data.val_split},
        "versions": _versions(opset), "opset": opset,
        "parity": {"source": parity_src, "fp32_min_agreement": FP32_MIN_AGREEMENT, "results": parity},
        "fp16": extra.get("fp16"), "quantization": extra.get("int8"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    save_manifest(manifest, out)
    agree = parity["fp32"]["agreement"]
    if agree < FP32_MIN_AGREEMENT:
        raise ApdError(f"FP32 ONNX parity failed: argmax agreement with PyTorch {agree:.3f}% < {FP32_MIN_AGREEMENT}% "
                       f"(max |dlogit| {parity['fp32']['max_abs_diff']:.3g}); see {out / 'manifest.json'}")

    if trt:
        from .tensorrt import build_engines

        for fname, meta in build_engines(out, manifest, [p for p in precisions], workspace_gb=workspace_gb, log=log):
            prec = fname[len("model_"):-len(".engine")]
            manifest["files"].append(file_entry(out, fname, "engine", prec, engine_meta=meta))
        manifest["versions"]["tensorrt"] = manifest["files"][-1]["engine_meta"]["tensorrt_version"]
        save_manifest(manifest, out)
    log(f"bundle written: {out}")
    return out
