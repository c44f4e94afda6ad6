"""What is benchmarked: a bundle folder, or a checkpoint (file or run folder) exported on the fly for ort/trt.

A checkpoint gets a manifest-shaped dict (classes, mean/std, input size from its recipe) so every backend
runs the same pre/postprocessing. Torch-free: a checkpoint is read, and exported, only when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..checkpoint import find_checkpoint
from ..errors import ApdError
from ..targets import ONNX_PRECISIONS
from .accuracy import EvalData
from .options import BenchOptions, first_line


@dataclass
class Artifact:
    path: Path
    kind: str
    manifest: dict
    bundle: Path | None = None
    checkpoint: Path | None = None
    error: str = ""
    eval: EvalData | None = None
    profile: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        m = self.manifest.get("model") or {}
        return str(m.get("name") or self.manifest.get("name") or self.path.name)


def newest_bundle(export_dir: str | Path = "export") -> Path:
    """The most recently written bundle (a folder with manifest.json) under ``export_dir``."""
    root = Path(export_dir)
    found = [p.parent for p in root.glob("**/manifest.json")] if root.is_dir() else []
    if not found:
        raise ApdError(f"no bundle found under {root}/ (run `apd-edge export CHECKPOINT` or pass a bundle path)")
    return max(found, key=lambda p: (p / "manifest.json").stat().st_mtime)


def artifact_kind(path: Path) -> str:
    """'bundle' (folder with manifest.json) or 'checkpoint' (a .pt file or a run folder)."""
    if path.is_dir() and (path / "manifest.json").is_file():
        return "bundle"
    if path.is_file() and path.name == "manifest.json":
        return "bundle"
    if path.is_dir() and find_checkpoint(path) is not None:
        return "checkpoint"
    if path.is_file():
        return "checkpoint"
    raise ApdError(f"{path}: not a bundle folder (manifest.json), a checkpoint file, or a run folder")


def checkpoint_manifest(ckpt: dict, input_size: tuple[int, int] | None) -> dict:
    """A manifest-shaped dict for benchmarking a checkpoint with the torch backend alone."""
    recipe = ckpt.get("recipe") or {}
    size = input_size or (recipe.get("export") or {}).get("input_size") or (recipe.get("train") or {}).get("crop")
    if not size:
        raise ApdError("checkpoint records no input size: pass --input-size H W")
    n = int(ckpt["num_classes"])
    return {
        "name": ckpt.get("model_name", "model"),
        "model": {"name": ckpt.get("model_name", "model")},
        "num_classes": n,
        "classes": list(ckpt.get("classes") or [str(i) for i in range(n)]),
        "extra_classes": list(ckpt.get("extra_classes") or []),
        "palette": ckpt.get("palette") or [],
        "mean": list(ckpt.get("mean") or [0.485, 0.456, 0.406]),
        "std": list(ckpt.get("std") or [0.229, 0.224, 0.225]),
        "preprocess": {"mode": "pad", "size": [int(size[0]), int(size[1])]},
        "outputs": [{"name": "logits", "kind": "logits"}],
        "recipe": recipe,
        "files": [],
    }


def load_artifact(path: Path, opts: BenchOptions, out: Path, echo: Callable) -> Artifact:
    """Read a bundle's manifest, or a checkpoint (exported into ``<out>/bundles/`` when ort/trt rows need it)."""
    from ..runtime.manifest import load_manifest

    kind = artifact_kind(path)
    if kind == "bundle":
        bundle = path if path.is_dir() else path.parent
        manifest = load_manifest(bundle)
        src = (manifest.get("source") or {}).get("checkpoint")
        ckpt = Path(src) if src else None
        if ckpt is not None and not ckpt.is_absolute() and not ckpt.exists():
            ckpt = bundle / ckpt
        return Artifact(path, kind, manifest, bundle=bundle, checkpoint=ckpt)
    # A checkpoint: the torch backend reads it directly; ort/trt rows need an exported bundle.
    from ..checkpoint import checkpoint_file, load_checkpoint

    ckpt_file = checkpoint_file(path)
    ckpt = load_checkpoint(ckpt_file)
    art = Artifact(path, kind, checkpoint_manifest(ckpt, opts.input_size), checkpoint=ckpt_file)
    need = [p for p in opts.precisions if p in ONNX_PRECISIONS] if any(b != "torch" for b in opts.backends) else []
    if need:
        from ..export import export_bundle
        from ..runtime import list_backends

        build_trt = "trt" in opts.backends and list_backends()["trt"][0]  # else trt rows give the reason
        target = out / "bundles" / f"{ckpt_file.parent.name}_{ckpt_file.stem}"
        echo(f"exporting {ckpt_file} -> {target} ({', '.join(need)})")
        try:
            bundle = export_bundle(ckpt_file, target, input_size=opts.input_size,
                                   precisions=tuple(dict.fromkeys(["fp32", *need])), trt=build_trt)
            art.bundle = Path(bundle)
            art.manifest = load_manifest(art.bundle)
        except Exception as exc:  # export problems become row reasons; torch rows still run
            art.error = f"export failed: {first_line(exc)}"
    return art
