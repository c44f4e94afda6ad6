"""Bundle manifest (``manifest.json``): build-time writer, load-time validation, file hashes.

Torch-free. The format is specified in ``docs/bundle-format.md``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ApdError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "apd-edge-bundle"
FORMAT_VERSION = 1

# key -> expected Python type(s) of its value
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "name": str,
    "model": dict,
    "num_classes": int,
    "classes": list,
    "palette": list,
    "mean": list,
    "std": list,
    "input": dict,
    "outputs": list,
    "preprocess": dict,
    "output_kind": str,
    "files": list,
}
PREPROCESS_MODES = ("pad", "resize")
OUTPUT_KINDS = ("logits", "labels")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_entry(bundle_dir: str | Path, filename: str, fmt: str, precision: str, **extra: Any) -> dict:
    """A ``files`` entry for a file already written into the bundle folder."""
    path = Path(bundle_dir) / filename
    return {"path": filename, "format": fmt, "precision": precision, "bytes": path.stat().st_size,
            "sha256": sha256_file(path), **extra}


def validate_manifest(m: Any, where: str = "manifest") -> dict:
    """Check required keys and their types; raise ApdError naming the first problem."""
    if not isinstance(m, dict):
        raise ApdError(f"{where}: expected a JSON object, got {type(m).__name__}")
    for key, tp in REQUIRED_KEYS.items():
        if key not in m:
            raise ApdError(f"{where}: missing required key '{key}'")
        if not isinstance(m[key], tp) or (tp is int and isinstance(m[key], bool)):
            raise ApdError(f"{where}: key '{key}' has the wrong type ({type(m[key]).__name__})")
    if m["format"] != FORMAT_NAME:
        raise ApdError(f"{where}: format is {m['format']!r}, expected {FORMAT_NAME!r}")
    if m["format_version"] > FORMAT_VERSION:
        raise ApdError(f"{where}: format_version {m['format_version']} is newer than this apd-edge "
                       f"understands ({FORMAT_VERSION}); upgrade apd-edge")
    if len(m["classes"]) != m["num_classes"]:
        raise ApdError(f"{where}: {len(m['classes'])} class names for num_classes={m['num_classes']}")
    extra = m.get("extra_classes", [])  # optional: trailing outputs the dataset does not label (e.g. void)
    if not (isinstance(extra, list) and all(isinstance(e, str) for e in extra) and len(extra) < m["num_classes"]):
        raise ApdError(f"{where}: extra_classes must be a list of fewer than num_classes names, got {extra!r}")
    mode = m["preprocess"].get("mode")
    if mode not in PREPROCESS_MODES:
        raise ApdError(f"{where}: preprocess.mode {mode!r} is not one of {', '.join(PREPROCESS_MODES)}")
    if m["output_kind"] not in OUTPUT_KINDS:
        raise ApdError(f"{where}: output_kind {m['output_kind']!r} is not one of {', '.join(OUTPUT_KINDS)}")
    for k in ("size",):
        v = m["preprocess"].get(k)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)):
            raise ApdError(f"{where}: preprocess.{k} must be [H, W] positive integers, got {v!r}")
    for i, f in enumerate(m["files"]):
        for k in ("path", "format", "precision", "sha256"):
            if not isinstance(f, dict) or k not in f:
                raise ApdError(f"{where}: files[{i}] lacks '{k}'")
    return m


def save_manifest(manifest: dict, bundle_dir: str | Path) -> Path:
    """Validate and write ``manifest.json`` (sorted keys off, 2-space indent)."""
    validate_manifest(manifest)
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_manifest(path: str | Path, verify: bool = False) -> dict:
    """Load a bundle's manifest (folder or manifest path). ``verify`` checks every file's sha256."""
    path = Path(path)
    bundle_dir = path if path.is_dir() else path.parent
    mpath = path / MANIFEST_NAME if path.is_dir() else path
    if not mpath.is_file():
        raise ApdError(f"no {MANIFEST_NAME} in {bundle_dir}: not an apd-edge bundle (run `apd-edge export`)")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ApdError(f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    validate_manifest(m, str(mpath))
    if verify:
        for f in m["files"]:
            verify_file(bundle_dir, f)
    return m


def verify_file(bundle_dir: str | Path, entry: dict) -> Path:
    """Check that a ``files`` entry exists and matches its sha256; return its path."""
    p = Path(bundle_dir) / entry["path"]
    if not p.is_file():
        raise ApdError(f"bundle file missing: {p}")
    digest = sha256_file(p)
    if digest != entry["sha256"]:
        raise ApdError(f"{p}: sha256 {digest[:12]}... does not match the manifest ({entry['sha256'][:12]}...); "
                       "the file was modified or corrupted")
    return p


def find_file(manifest: dict, fmt: str, precision: str, variant: str | None = None) -> dict:
    """The ``files`` entry of a format ('onnx' | 'engine') and precision, or an ApdError listing choices.

    Entries may carry a ``variant`` (``cpu``: the graph for ONNX Runtime's CPU provider: PRelu rewritten,
    and for INT8 uint8 activations).
    With ``variant`` given, that entry is preferred and the plain one is the fallback; without it the
    plain entry (the one TensorRT builds from) is returned.
    """
    if variant is not None:
        for f in manifest["files"]:
            if f["format"] == fmt and f["precision"] == precision and f.get("variant") == variant:
                return f
    for f in manifest["files"]:
        if f["format"] == fmt and f["precision"] == precision and not f.get("variant"):
            return f
    have = sorted(f["precision"] for f in manifest["files"] if f["format"] == fmt)
    raise ApdError(f"bundle '{manifest['name']}' has no {fmt} file for precision '{precision}'; "
                   f"available: {', '.join(have) or 'none'}")


def int8_gate(manifest: dict) -> str | None:
    """A one-line warning when the bundle's INT8 model missed its accuracy target at export, else None."""
    q = manifest.get("quantization") or {}
    t = q.get("target") or {}
    if t.get("met") is False:
        drop = t.get("drop")
        return ((f"INT8 missed its accuracy target: mIoU drop {drop:.2f} > {t.get('max_drop')} points "
                 f"against FP32 ({q.get('float_layers', 0)} layer(s) kept float)") if drop is not None
                else "INT8 missed its accuracy target")
    return None
