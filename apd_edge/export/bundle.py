"""``export_bundle``: checkpoint -> self-describing bundle folder (ONNX FP32/FP16/INT8, engines, manifest).

Format: see ``docs/bundle-format.md``. Calibration and parity use real images of the checkpoint's recipe
dataset, preprocessed exactly as the runtime does (``manifest["preprocess"]``).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shutil
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..errors import ApdError
from ..metrics import scored_classes
from ..data.scoring import describe_selection
from ..runtime.backends.ort import OrtBackend
from ..runtime.manifest import FORMAT_NAME, FORMAT_VERSION, file_entry, save_manifest, sha256_file
from ..runtime.preprocess import preprocess_image
from ..targets import ONNX_PRECISIONS
from .int8 import CALIB_CACHE, DEFAULT_MAX_FLOAT, DEFAULT_TARGET_DROP, SENSITIVITY_JSON, SENSITIVITY_MD
from .parity import FP32_MIN_AGREEMENT, parity_table, pick_indices, run_parity

# files an export writes (replaced by a re-export, never carried over from the previous bundle)
OWN_FILES = ("manifest.json", "samples.npz", "calibration.npz", "int8_sensitivity.json", "int8_sensitivity.md")
ONNX_FILES = dict(zip(ONNX_PRECISIONS, ("model.onnx", "model_fp16.onnx", "model_int8.onnx")))
CPU_FP32_FILE = "model_cpu.onnx"  # the FP32 graph for ONNX Runtime's CPU provider (cpu_graph), when it differs
PRECISIONS = ONNX_PRECISIONS
DEFAULT_PARITY_IMAGES = 128  # covers CamVid val (101) whole; larger val sets are sampled evenly


def resolve_checkpoint(source: str | Path | None) -> Path:
    """A checkpoint file from a file, a run folder (best.pt, else last.pt) or None (runs/latest)."""
    from ..checkpoint import checkpoint_file

    p = Path(source) if source is not None else Path("runs") / "latest"
    if source is None and not p.exists():
        raise ApdError(f"checkpoint not found: {p} (train a model first, or pass a checkpoint)")
    return checkpoint_file(p).resolve()


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


def _eval_set(items, prep: dict, num_classes: int, scored: int | None):
    """The parity images, preprocessed once, as the INT8 search scores them."""
    from .int8 import EvalSet

    if not items:  # no dataset reachable: one fixed pseudo-random image, agreement only
        rng = np.random.default_rng(0)
        items = [(rng.integers(0, 256, (prep["size"][0], prep["size"][1], 3), dtype=np.uint8), None)]
    inputs, metas, masks = [], [], []
    for img, mask in items:
        x, meta = preprocess_image(img, tuple(prep["size"]), prep["mean"], prep["std"], prep["mode"], prep["pad_fill"])
        inputs.append(np.ascontiguousarray(x, dtype=np.float32))
        metas.append(meta)
        masks.append(mask)
    return EvalSet(inputs, metas, masks, num_classes, scored)


def _write_samples(out: Path, val_ds, images, prep: dict, fp32_backend, parity_src: str) -> dict:
    """``samples.npz``: a few val images (or the parity image) with their FP32 labels, for device-side parity."""
    from .samples import SAMPLE_COUNT, write_samples

    source = parity_src.split(",")[0].split(" (")[0]
    if val_ds is not None:
        idx = pick_indices(len(val_ds), SAMPLE_COUNT)
        picked, source = [img for img, _ in _images(val_ds, idx)], f"{source} images {idx}"
    else:
        picked = [img for img, _ in images]
    return write_samples(out, picked, prep, fp32_backend, source)


def bundle_lock(out: str | Path):
    """The lock held while a bundle folder is written (a file next to it: the folder itself is swapped)."""
    from ..runlock import RunLock

    out = Path(out)
    return RunLock(out, what="bundle folder", lock_file=out.parent / f".{out.name}.lock",
                   hint="; or export elsewhere with --out")


class _Stage:
    """An export writes into a hidden sibling folder that replaces the bundle only when complete, so a failed
    or killed export leaves the previous bundle as it was."""

    def __init__(self) -> None:
        self.final: Path | None = None
        self.tmp: Path | None = None
        self.lock = None

    def begin(self, out: Path) -> Path:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.lock = bundle_lock(out).acquire()
        self.final = out
        olds = sorted(out.parent.glob(f".{out.name}.old-*"))
        if olds and not out.exists():  # killed between the two renames of a swap: the previous bundle returns
            os.replace(olds[-1], out)
        for stale in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by killed exports (we hold the lock)
        self.tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        self.tmp.mkdir()
        if (out / CALIB_CACHE).is_file():  # the INT8 calibration cache is keyed: the export decides if it still fits
            shutil.copy2(out / CALIB_CACHE, self.tmp / CALIB_CACHE)
        return self.tmp

    def commit(self) -> Path:
        final, tmp = self.final, self.tmp
        old = None
        if final.is_dir():
            for f in final.iterdir():  # keep what is not ours (e.g. notes); old model files are dropped
                ours = (f.name in OWN_FILES or f.name.startswith("model") and f.suffix in (".onnx", ".engine"))
                if not ours and not (tmp / f.name).exists():
                    os.replace(f, tmp / f.name)
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.tmp = None
        self._release()
        return final

    def keep_failed(self) -> Path:
        """Move a bundle that failed its checks to ``<name>.failed`` for inspection; returns that folder."""
        failed = self.final.parent / f"{self.final.name}.failed"
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(self.tmp, failed)
        self.tmp = None
        return failed

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def export_bundle(source: str | Path | None = None, out_dir: str | Path | None = None, **kwargs) -> Path:
    """Export a checkpoint (file, run folder, or ``runs/latest``) into a bundle folder; returns its path.

    The bundle folder is locked while it is written, and the export goes to a temporary sibling folder that
    replaces the previous bundle only once complete. Options: see ``_export_bundle``.
    """
    stage = _Stage()
    try:
        _export_bundle(source, out_dir, _stage=stage, **kwargs)
        return stage.commit()
    finally:
        stage.abort()  # no-op after commit


def _export_bundle(source: str | Path | None = None, out_dir: str | Path | None = None, *, name: str | None = None,
                  input_size: Sequence[int] | None = None, precisions: Sequence[str] = ("fp32",),
                  dynamic: bool = False, argmax: bool = False, calib_images: int = 128,
                  calib_method: str = "auto", trt: bool = False, data_root: str | Path | None = None,
                  parity_images: int = DEFAULT_PARITY_IMAGES, opset: int | None = None,
                  nodes_to_exclude: Sequence[str] | None = None, workspace_gb: float | None = None,
                  preprocess: str | None = None, progress: bool = True,
                  int8_target: float | None = DEFAULT_TARGET_DROP, int8_sensitivity: bool | str = True,
                  int8_max_float: float = DEFAULT_MAX_FLOAT, sensitivity_images: int = 8,
                  threads: int | None = None, qat_ranges: bool = True, int8_scheme: str = "auto",
                  int8_float: str = "auto",
                  _stage: _Stage | None = None) -> Path:
    """Export a checkpoint (file, run folder, or ``runs/latest``) into a bundle folder; returns its path.

    INT8 (``int8.build_int8``): streaming calibration on training images (cached in the bundle), the
    calibration method chosen by measured error (``calib_method="auto"``), a per-group sensitivity ranking
    on held-out val images, and mixed precision until the mIoU drop against the FP32 ONNX on the parity
    images is at most ``int8_target`` points (None: plain INT8). A model that misses the target is still
    written and marked in the manifest. ``int8_float`` (auto, fp16, fp32): the INT8 graph's non-INT8 layers in FP16
    (FP16 scales, so they run in FP16 on TensorRT) or FP32; auto keeps FP16 unless it costs the target.

    Fails with ApdError on bad input, when INT8 calibration has no real dataset, and when FP32 parity
    (argmax agreement with PyTorch) is under 99.9 %. A QAT checkpoint's activation ranges replace the
    calibrated ones of the conv inputs it quantized (``qat_ranges``).
    """
    log: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    precisions = _check_options(precisions, calib_method, int8_target, calib_images, preprocess)
    if trt:
        from ..runtime.backends.trt_check import preflight

        preflight()  # TensorRT, cuda-python, driver, device: fail now, with the fix, not after minutes of work

    src = _load_source(source, data_root, log)
    recipe = src.recipe
    opset = int(opset or recipe.export.opset)
    workspace_gb = float(workspace_gb or recipe.export.workspace_gb)
    name = name or recipe.name or src.path.parent.name
    out = Path(out_dir) if out_dir is not None else Path("export") / name
    final = out
    if _stage is not None:
        out = _stage.begin(out)  # everything below writes into the staging folder

    val_ds, train_ds = _open_datasets(src, "int8" in precisions)
    probe_ds = val_ds if val_ds is not None else train_ds
    prep = _preprocessing(probe_ds, input_size, preprocess, src)
    num_classes = int(src.ckpt["num_classes"])
    classes, palette = _class_names_and_palette(src.ckpt, probe_ds, num_classes)
    _clear_stale(out)

    log(f"exporting {src.ckpt.get('model_name')} at {prep['size'][0]}x{prep['size'][1]} ({prep['mode']}) "
        f"opset {opset} -> {out}")
    io, files, extra = _export_onnx(src, out, prep, num_classes, precisions, opset, dynamic, argmax, log)
    extra_classes = list(src.ckpt.get("extra_classes") or [])  # trailing outputs the dataset does not label (void)
    scored = (num_classes if val_ds is None
              else scored_classes(num_classes, val_ds.num_classes, extra_classes, "the checkpoint"))
    val_items = None
    if val_ds is not None:
        parity_idx = pick_indices(len(val_ds), parity_images)
        if "int8" in precisions or len(parity_idx) <= 16:  # INT8 scores the same images as parity: load once
            val_items = list(_images(val_ds, parity_idx))
    if "int8" in precisions:
        extra["int8"] = _int8_step(src, out, files, train_ds, val_items, prep, num_classes,
                                   scored if extra_classes else None, calib_images=calib_images,
                                   calib_method=calib_method, int8_target=int8_target,
                                   int8_sensitivity=int8_sensitivity, sensitivity_images=sensitivity_images,
                                   int8_max_float=int8_max_float, nodes_to_exclude=nodes_to_exclude,
                                   threads=threads, qat_ranges=qat_ranges, int8_scheme=int8_scheme,
                                   int8_float=int8_float, log=log)

    images, parity_src = _parity_images(recipe, val_ds, val_items, parity_images, prep)
    log(f"parity: ONNX Runtime CPU vs PyTorch on {parity_src}")
    backends = {f["precision"] + (f"_{f['variant']}" if f.get("variant") else ""):
                OrtBackend(out / f["path"], device="cpu")
                for f in files if f["format"] == "onnx"}
    parity = run_parity(src.model, backends, images, prep, scored, log=log, extra_classes=num_classes - scored)
    log(parity_table(parity))
    samples = _write_samples(out, val_ds, images, prep, backends["fp32"], parity_src)

    manifest = _manifest(src, name, num_classes, classes, palette, extra_classes, io, prep, argmax, dynamic, files,
                         opset, parity_src, parity, extra)
    manifest["samples"] = samples
    save_manifest(manifest, out)
    agree = parity["fp32"]["agreement"]
    if agree < FP32_MIN_AGREEMENT:
        failed = _stage.keep_failed() if _stage is not None else out
        raise ApdError(f"FP32 ONNX parity failed: argmax agreement with PyTorch {agree:.3f}% < {FP32_MIN_AGREEMENT}% "
                       f"(max |dlogit| {parity['fp32']['max_abs_diff']:.3g}); see {failed / 'manifest.json'}"
                       + ("; the previous bundle is unchanged" if final.exists() else ""))

    if trt:  # the same engine build as `apd-edge build` on a copied bundle
        from .build import build_bundle

        build_bundle(out, precisions, workspace_gb=workspace_gb, log=log)
    log(f"bundle written: {final}")
    return out


def _check_options(precisions: Sequence[str], calib_method: str, int8_target: float | None, calib_images: int,
                   preprocess: str | None) -> list[str]:
    """Refuse bad options before any work; returns the precisions, deduplicated, FP32 first if it was missing."""
    from .calibrate import CALIB_METHODS

    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        if p not in PRECISIONS:
            raise ApdError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # every other precision derives from the FP32 graph
    if calib_method != "auto" and calib_method not in CALIB_METHODS:
        raise ApdError(f"unknown calibration method {calib_method!r}; choose auto or one of {', '.join(CALIB_METHODS)}")
    if int8_target is not None and not (math.isfinite(int8_target) and int8_target >= 0):
        raise ApdError(f"int8 target must be a finite mIoU drop >= 0, got {int8_target}")
    if calib_images < 1:
        raise ApdError(f"calib_images must be >= 1, got {calib_images}")
    if preprocess not in (None, "pad", "resize"):
        raise ApdError(f"unknown preprocess mode {preprocess!r} (pad or resize)")
    return precisions


@dataclass
class _Source:
    """The checkpoint being exported: its path, the model (eval mode), the raw checkpoint and its recipe."""

    path: Path
    model: Any
    ckpt: dict
    raw_recipe: dict
    recipe: Any


def _load_source(source: str | Path | None, data_root: str | Path | None, log: Callable[[str], None]) -> _Source:
    from ..config import recipe_from_dict
    from ..checkpoint import model_from_checkpoint

    ckpt_path = resolve_checkpoint(source)
    log(f"loading {ckpt_path}")
    model, ckpt = model_from_checkpoint(ckpt_path)
    model.eval()
    raw_recipe = dict(ckpt.get("recipe") or {})
    recipe = recipe_from_dict(raw_recipe)
    if data_root is not None:
        recipe.data.root = str(data_root)
    return _Source(ckpt_path, model, ckpt, raw_recipe, recipe)


def _open_datasets(src: _Source, int8: bool):
    """(val, train) datasets of the checkpoint's recipe; None where unreachable (train is required for INT8)."""
    recipe = src.recipe
    if "data" in src.raw_recipe:
        val_ds = _open_dataset(recipe, recipe.data.val_split, "parity", required=False)
        train_ds = _open_dataset(recipe, recipe.data.train_split, "INT8 calibration", required=int8)
    elif int8:  # a recipe-less checkpoint: its dataset is unknown, never guess one
        raise ApdError(f"INT8 calibration needs real images but {src.path} records no recipe data section "
                       "(data.root unknown); export without --int8 or use a checkpoint from `apd-edge train`")
    else:
        val_ds = train_ds = None
    return val_ds, train_ds


def _preprocessing(probe_ds, input_size: Sequence[int] | None, preprocess: str | None, src: _Source) -> dict:
    """The bundle's preprocessing (``manifest["preprocess"]``): input size, pad or resize, normalisation."""
    recipe, ckpt = src.recipe, src.ckpt
    image_hw = tuple(probe_ds[0][0].shape[:2]) if probe_ds is not None else None
    size, mode = choose_input(image_hw, input_size, recipe.export.input_size, recipe.train.crop)
    mode = preprocess or mode
    mean = [float(v) for v in (ckpt.get("mean") or recipe.data.mean)]
    std = [float(v) for v in (ckpt.get("std") or recipe.data.std)]
    return {"mode": mode, "size": size, "pad_fill": "reflect", "mean": mean, "std": std, "color": "RGB",
            "scale": 1 / 255, "layout": "NCHW"}


def _class_names_and_palette(ckpt: dict, probe_ds, num_classes: int) -> tuple[list, list[list[int]]]:
    classes = list(ckpt.get("classes")
                   or (probe_ds.class_names if probe_ds else [f"class_{i}" for i in range(num_classes)]))
    palette = ckpt.get("palette") or (probe_ds.palette if probe_ds else None)
    if palette is None:
        rng = np.random.default_rng(0)
        palette = rng.integers(0, 256, (num_classes, 3)).tolist()
    return classes, [[int(c) for c in rgb] for rgb in palette]


def _clear_stale(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.onnx")) + list(out.glob("model_*.engine")) + [out / SENSITIVITY_JSON,
                                                                                       out / SENSITIVITY_MD]:
        if stale.is_file():  # ours, from an older export (calibration.npz stays: it is a keyed cache)
            stale.unlink()


def _export_onnx(src: _Source, out: Path, prep: dict, num_classes: int, precisions: Sequence[str], opset: int,
                 dynamic: bool, argmax: bool, log: Callable[[str], None]) -> tuple[dict, list[dict], dict]:
    """The FP32 ONNX (and the FP16 copy when asked); returns (export_onnx's I/O, file entries, summaries)."""
    from .fp16 import convert_fp16
    from .onnx import export_onnx

    io = export_onnx(src.model, out / ONNX_FILES["fp32"], tuple(prep["size"]), opset=opset, dynamic=dynamic,
                     argmax=argmax)
    if io["num_classes"] != num_classes:
        raise ApdError(f"model outputs {io['num_classes']} classes, checkpoint says {num_classes}")
    files = [file_entry(out, ONNX_FILES["fp32"], "onnx", "fp32")]
    extra: dict = {}
    cpu = _cpu_fp32(out, prep, log)
    if cpu:
        files.append(file_entry(out, CPU_FP32_FILE, "onnx", "fp32", variant="cpu"))
        extra["cpu_fp32"] = cpu
    if "fp16" in precisions:
        log("converting to FP16 (FP32 I/O, sensitive ops in FP32)")
        extra["fp16"] = convert_fp16(out / ONNX_FILES["fp32"], out / ONNX_FILES["fp16"])
        files.append(file_entry(out, ONNX_FILES["fp16"], "onnx", "fp16"))
    return io, files, extra


def _cpu_fp32(out: Path, prep: dict, log: Callable[[str], None]) -> dict | None:
    """``model_cpu.onnx``: the FP32 graph with ops ONNX Runtime's CPU runs slowly rewritten (``cpu_graph``), or
    None when there is nothing to rewrite. Shipped only when its logits equal the FP32 graph's on a fixed input."""
    from .cpu_graph import write_cpu_graph

    counts = write_cpu_graph(str(out / ONNX_FILES["fp32"]), str(out / CPU_FP32_FILE))
    if not counts:
        return None
    h, w = prep["size"]
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    ref, new = (OrtBackend(out / f, device="cpu").infer(x) for f in (ONNX_FILES["fp32"], CPU_FP32_FILE))
    diff = max(float(np.abs(ref[k].astype(np.float32) - new[k].astype(np.float32)).max()) for k in ref)
    if diff > 1e-5 * max(1.0, max(float(np.abs(v).max()) for v in ref.values())):
        (out / CPU_FP32_FILE).unlink()
        log(f"warning: the CPU rewrite of the FP32 graph changed its logits (max |d| {diff:.3g}); not shipped")
        return None
    log(f"{CPU_FP32_FILE}: {', '.join(f'{v} {k}' for k, v in counts.items())} rewritten for ONNX Runtime's CPU "
        f"(max |dlogit| vs {ONNX_FILES['fp32']}: {diff:.3g})")
    return {"file": CPU_FP32_FILE, "rewrites": counts, "max_abs_diff": diff}


def _int8_step(src: _Source, out: Path, files: list[dict], train_ds, val_items, prep: dict, num_classes: int,
               scored: int | None, *, calib_images: int, calib_method: str, int8_target: float | None,
               int8_sensitivity: bool | str, sensitivity_images: int, int8_max_float: float,
               nodes_to_exclude: Sequence[str] | None, threads: int | None, qat_ranges: bool, int8_scheme: str,
               int8_float: str, log: Callable[[str], None]) -> dict:
    """Calibrate and build the INT8 graph(s) (``int8.build_int8``); appends their file entries to ``files`` and
    returns the quantization summary (``manifest["quantization"]``)."""
    from .int8 import build_int8

    recipe, size, mode = src.recipe, prep["size"], prep["mode"]
    idx = pick_indices(len(train_ds), calib_images)
    log(f"INT8 calibration on {len(idx)} '{recipe.data.train_split}' images, method {calib_method}")

    def calib_inputs() -> Iterator[np.ndarray]:
        for img, _ in _images(train_ds, idx):
            yield preprocess_image(img, tuple(size), prep["mean"], prep["std"], mode, prep["pad_fill"])[0]

    ev = _eval_set(val_items, prep, num_classes, scored)
    overrides = None
    if qat_ranges and src.ckpt.get("qat"):  # a QAT run: the activation ranges it trained with win
        from .qat import qat_range_overrides

        overrides = qat_range_overrides(src.ckpt["qat"])
        log("using the QAT checkpoint's activation ranges for the conv inputs it quantized")
        if int8_scheme == "auto":  # QAT emulated Q/DQ on conv inputs only: quantize exactly those
            int8_scheme = "weighted"
    desc = {"dataset": recipe.data.dataset, "root": str(recipe.data.root), "split": recipe.data.train_split,
            "options": dict(recipe.data.options), "indices": idx, "preprocess": prep}
    q = build_int8(out / ONNX_FILES["fp32"], out, calib_inputs=calib_inputs, calib_desc=desc, ev=ev,
                   method=calib_method, target_drop=int8_target, sensitivity=int8_sensitivity,
                   sensitivity_images=sensitivity_images, max_float=int8_max_float,
                   nodes_to_exclude=nodes_to_exclude or (), threads=threads,
                   range_overrides=overrides, scheme=int8_scheme, float_precision=int8_float, log=log)
    del ev
    gate = q["target"]
    if gate["met"] is False:  # the model is still written; say so plainly, whatever the verbosity
        print(f"warning: INT8 misses its target: mIoU drop {gate['drop']:.2f} > {gate['max_drop']} points vs FP32 "
              f"with {q['float_layers']} layer(s) in float; written anyway and marked in the manifest",
              file=sys.stderr, flush=True)
    files.append(file_entry(out, ONNX_FILES["int8"], "onnx", "int8"))
    if q.get("cpu_variant"):
        files.append(file_entry(out, q["cpu_variant"]["file"], "onnx", "int8", variant="cpu"))
    for aux in (CALIB_CACHE, SENSITIVITY_JSON, SENSITIVITY_MD):
        if (out / aux).is_file():
            files.append(file_entry(out, aux, "data", "int8"))
    return q


def _parity_images(recipe, val_ds, val_items, parity_images: int, prep: dict) -> tuple[Iterable, str]:
    """The parity images and their description: real val images, or without a dataset a fixed pseudo-random
    image (max diff and agreement only)."""
    if val_ds is not None:
        parity_idx = pick_indices(len(val_ds), parity_images)
        images = val_items if val_items is not None else _images(val_ds, parity_idx)
        parity_src = describe_selection(recipe.data.dataset, recipe.data.val_split, len(parity_idx), len(val_ds),
                                        parity_images)
    else:
        rng = np.random.default_rng(0)
        size = prep["size"]
        images = [(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8), None)]
        parity_src = "no dataset reachable: one fixed random image (no mIoU)"
    return images, parity_src


def _manifest(src: _Source, name: str, num_classes: int, classes: list, palette: list, extra_classes: list,
              io: dict, prep: dict, argmax: bool, dynamic: bool, files: list[dict], opset: int, parity_src: str,
              parity: dict, extra: dict) -> dict:
    ckpt, recipe = src.ckpt, src.recipe
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name,
        "model": {"name": ckpt.get("model_name"), "kwargs": ckpt.get("model_kwargs", {}), "step": ckpt.get("step"),
                  "best_miou": ckpt.get("best_miou")},
        "num_classes": num_classes, "classes": classes, "palette": palette, "mean": prep["mean"], "std": prep["std"],
        "extra_classes": extra_classes,
        "input": io["input"], "outputs": io["outputs"], "preprocess": prep,
        "output_kind": "labels" if argmax else "logits", "dynamic": bool(dynamic),
        "files": files,
        "source": {"checkpoint": str(src.path), "sha256": sha256_file(src.path),
                   "dataset": recipe.data.dataset, "data_root": recipe.data.root,
                   # options select the data itself (synthetic size and count, folder formats): bench needs them
                   "data_options": dict(recipe.data.options), "val_split": recipe.data.val_split},
        "versions": _versions(opset), "opset": opset,
        "parity": {"source": parity_src, "fp32_min_agreement": FP32_MIN_AGREEMENT, "results": parity},
        "fp16": extra.get("fp16"), "quantization": extra.get("int8"), "cpu_fp32": extra.get("cpu_fp32"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
