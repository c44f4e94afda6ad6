"""Sample inputs stored in a bundle (``samples.npz``) for parity checks on the device, without the dataset.

``images``: uint8 N x H x W x 3 RGB already fitted to the bundle's input size (resized/padded as the
runtime's preprocessing would), so preprocessing on the device is a plain normalisation, identical on
every machine. ``labels``: the FP32 ONNX model's argmax on them (ONNX Runtime CPU at export time).
Logits are not stored: at Cityscapes size they would be ~80 MB per image in FP16; engines are compared
with ONNX Runtime on the device instead (logit differences) and with these labels (agreement).
Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..errors import ApdError
from ..runtime.manifest import sha256_file
from ..runtime.preprocess import check_image, fit_size, preprocess_image

SAMPLES_FILE = "samples.npz"
SAMPLE_COUNT = 4


def fit_to_input(img: np.ndarray, size: tuple[int, int], mode: str, pad_fill: str = "reflect",
                 mean=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A uint8 RGB image at exactly ``size``, fitted the way ``preprocess_image`` fits it."""
    check_image(img)
    H, W = size
    vh, vw = fit_size(img.shape[:2], (H, W), mode)
    if (vh, vw) != img.shape[:2]:
        img = cv2.resize(img, (vw, vh), interpolation=cv2.INTER_LINEAR)
    ph, pw = H - vh, W - vw
    if ph or pw:
        if pad_fill == "zero":  # the mean colour, as close as uint8 gets
            fill = np.clip(np.round(np.asarray(mean, np.float64) * 255), 0, 255).astype(np.uint8)
            out = np.empty((H, W, 3), np.uint8)
            out[...] = fill
            out[:vh, :vw] = img
            img = out
        else:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if ph < vh and pw < vw else "edge")
    return np.ascontiguousarray(img)


def sample_input(img: np.ndarray, manifest: dict) -> np.ndarray:
    """The float32 1 x 3 x H x W network input of one stored sample (normalisation only: it is input-sized)."""
    p = manifest["preprocess"]
    return preprocess_image(img, tuple(p["size"]), manifest["mean"], manifest["std"], p["mode"],
                            p.get("pad_fill", "reflect"))[0]


def write_samples(bundle_dir: str | Path, images: Iterable[np.ndarray], prep: dict, fp32_backend, source: str,
                  count: int = SAMPLE_COUNT) -> dict:
    """Write ``samples.npz`` from up to ``count`` images; returns the manifest's ``samples`` entry."""
    size = tuple(prep["size"])
    fitted = []
    for img in images:
        fitted.append(fit_to_input(img, size, prep["mode"], prep.get("pad_fill", "reflect"), prep["mean"]))
        if len(fitted) == count:
            break
    if not fitted:
        raise ApdError("no images to store as bundle samples")
    stub = {"preprocess": prep, "mean": prep["mean"], "std": prep["std"]}
    labels = []
    for img in fitted:
        logits = fp32_backend.infer(sample_input(img, stub), ["logits"])["logits"]
        labels.append(np.argmax(logits[0], axis=0))
    lab = np.stack(labels)
    lab = lab.astype(np.uint8 if lab.max(initial=0) < 256 else np.int32)
    path = Path(bundle_dir) / SAMPLES_FILE
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, images=np.stack(fitted), labels=lab)
    tmp.replace(path)
    try:
        import onnxruntime

        ref = f"FP32 ONNX argmax, ONNX Runtime {onnxruntime.__version__} CPU"
    except ImportError:  # pragma: no cover - export always has onnxruntime
        ref = "FP32 ONNX argmax"
    return {"path": SAMPLES_FILE, "bytes": path.stat().st_size, "sha256": sha256_file(path), "count": len(fitted),
            "size": [int(size[0]), int(size[1])], "source": source, "labels": ref}


def load_samples(bundle_dir: str | Path, manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """``(images, labels)`` from the bundle, checked against the manifest; None when the bundle has none."""
    entry = manifest.get("samples")
    if not entry:
        return None
    path = Path(bundle_dir) / entry["path"]
    if not path.is_file():
        raise ApdError(f"bundle file missing: {path} (listed in the manifest's samples)")
    if sha256_file(path) != entry["sha256"]:
        raise ApdError(f"{path}: sha256 does not match the manifest; the file was modified or corrupted")
    with np.load(path) as z:
        images, labels = z["images"], z["labels"]
    H, W = manifest["preprocess"]["size"]
    if images.ndim != 4 or images.shape[1:] != (H, W, 3) or images.dtype != np.uint8:
        raise ApdError(f"{path}: images are {images.dtype} {list(images.shape)}, expected uint8 [N, {H}, {W}, 3]")
    if labels.shape != images.shape[:3]:
        raise ApdError(f"{path}: labels {list(labels.shape)} do not match images {list(images.shape)}")
    return images, labels


def sample_parity(backend, samples: tuple[np.ndarray, np.ndarray], manifest: dict, reference=None) -> dict:
    """Run ``backend`` (``infer(x, [logits name])``) on the stored samples.

    Against ``reference`` (another backend, e.g. ONNX Runtime on the same ONNX file): max / mean absolute
    logit difference and argmax agreement (%); against the stored FP32 labels: agreement (%).
    """
    images, labels = samples
    name = next((o["name"] for o in manifest["outputs"] if o.get("kind") == "logits"), "logits")
    max_d = sum_d = 0.0
    n_vals = agree_ref = agree_fp32 = pixels = 0
    for img, lab in zip(images, labels):
        x = sample_input(img, manifest)
        out = np.asarray(backend.infer(x, [name])[name], np.float32)
        pred = np.argmax(out[0], axis=0)
        agree_fp32 += int((pred == lab).sum())
        pixels += pred.size
        if reference is not None:
            ref = np.asarray(reference.infer(x, [name])[name], np.float32)
            d = np.abs(out - ref)
            max_d, sum_d, n_vals = max(max_d, float(d.max())), sum_d + float(d.sum()), n_vals + d.size
            agree_ref += int((pred == np.argmax(ref[0], axis=0)).sum())
    res = {"images": int(len(images)), "agreement_fp32_labels": 100.0 * agree_fp32 / max(1, pixels)}
    if reference is not None:
        res.update({"max_abs_diff": max_d, "mean_abs_diff": sum_d / max(1, n_vals),
                    "agreement": 100.0 * agree_ref / max(1, pixels)})
    return res
