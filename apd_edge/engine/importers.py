"""Bringing published weights in: importers turn an outside state dict into an apd-edge run folder.

An importer (registered by name) renames the foreign keys onto one of our models, folds foreign
preprocessing into the weights where that is exact, and says what the outputs mean: class names,
trailing ``extra_classes`` the dataset does not label (e.g. void), mean/std in our convention
(``x = (rgb / 255 - mean) / std``). ``import_weights`` writes ``<out>/<name>/best.pt`` with
``recipe.yaml`` and ``summary.json``, so ``apd-edge eval``/``export``/``bench`` work on it unchanged.
The checkpoint format and how to write an importer: ``docs/checkpoint-format.md``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import ApdError
from ..registry import Registry


@dataclass
class Imported:
    """What an importer returns: our model's weights and what its inputs and outputs mean."""

    model_name: str  # a registered model (apd-edge models)
    num_classes: int  # model outputs, extra classes included
    state_dict: dict[str, torch.Tensor]  # our keys; BatchNorm's num_batches_tracked may be absent
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # the registered dataset the weights were trained for (recipe data.dataset)
    classes: list[str] | None = None  # num_classes names, extra classes last
    extra_classes: list[str] = field(default_factory=list)  # trailing outputs the dataset does not label
    palette: list[list[int]] | None = None
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # RGB, on 0..1 values
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    crop: list[int] | None = None  # train.crop for fine-tuning (H, W), None = recipe default
    input_size: list[int] | None = None  # export.input_size (H, W, multiples of 32), None = from the images
    run_name: str = "imported"  # default run folder name
    source: dict[str, Any] = field(default_factory=dict)  # paper, url, license, notes


@dataclass(frozen=True)
class Importer:
    name: str
    summary: str  # one line for --help and error messages
    detect: Callable[[Mapping[str, torch.Tensor]], bool]  # does a state dict look like this format?
    convert: Callable[[Mapping[str, torch.Tensor]], Imported]


IMPORTERS: Registry = Registry("import format")


def register_importer(importer: Importer) -> Importer:
    """Add an importer to the registry (``apd-edge import --format NAME``)."""
    IMPORTERS.register(importer.name)(importer)
    return importer


def list_importers() -> list[Importer]:
    return [IMPORTERS.get(n) for n in IMPORTERS.names()]


# ------------------------------------------------------------------------------------------------
# Helpers for writing importers
# ------------------------------------------------------------------------------------------------


def remap_keys(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str], fmt: str) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys by ``mapping`` (theirs -> ours). The state must hold exactly the mapping's keys;
    otherwise one ApdError naming the first missing and the first unexpected key."""
    missing = [k for k in mapping if k not in state]
    unexpected = [k for k in state if k not in mapping]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key '{missing[0]}'" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected key '{unexpected[0]}'"
                         + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise ApdError(f"weights do not match format '{fmt}': {'; '.join(parts)}")
    return {mapping[k]: v for k, v in state.items()}


def bgr_to_rgb_first_conv(weight: torch.Tensor) -> torch.Tensor:
    """Reorder a first convolution's input channels from BGR to RGB (exact: a permutation)."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ApdError(f"first convolution weight has shape {tuple(weight.shape)}, expected (out, 3, kh, kw)")
    return weight.flip(1).contiguous()


def reverse_channels(t: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    """``t`` with the three channels ``start..start+2`` along ``dim`` in reverse order (BGR <-> RGB)."""
    idx = torch.arange(t.shape[dim])
    idx[start:start + 3] = torch.tensor([start + 2, start + 1, start])
    return t.index_select(dim, idx).contiguous()


def load_exact(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model`` requiring every key and shape to match (BatchNorm counters excepted)."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            if k.endswith("num_batches_tracked"):
                continue  # older PyTorch releases did not save it; only momentum=None training reads it
            raise ApdError(f"{what}: no weight for '{k}'")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ApdError(f"{what}: '{k}' has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise ApdError(f"{what}: key '{extra[0]}' is not in the model")
    model.load_state_dict({k: state[k].to(v.dtype) if k in state else v for k, v in own.items()}, strict=True)


# ------------------------------------------------------------------------------------------------
# The ESPNet authors' release (sacmehta/ESPNet, train/Model.py)
# ------------------------------------------------------------------------------------------------

# The authors' CamVid loader normalises OpenCV BGR images as (x - M) / S / 255 (Normalize, then
# ToTensor's div(255)). With mean = M_rgb / 255 and std = S_rgb our (rgb / 255 - mean) / std is the same.
ESPNET_CAMVID_BGR_MEAN = [110.33, 108.41, 105.03]
ESPNET_CAMVID_BGR_STD = [72.13, 72.69, 69.90]


def espnet_authors_key_map(alpha2: int, alpha3: int) -> dict[str, str]:
    """The authors' ESPNet keys -> ours (``apd_edge.models.espnet``), for ``alpha2``/``alpha3`` ESP modules.

    Their CBR (conv, bn, act) is our ConvBNAct (0, 1, 2); their BR (bn, act) our BNPReLU (0, 1);
    DownSamplerB keeps bn/act itself, the residual block wraps them in a BR; c1, d1..d16 are our
    reduce and branches 0..4.
    """
    m: dict[str, str] = {}

    def bn(src: str, dst: str) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            m[f"{src}.{s}"] = f"{dst}.{s}"

    def br(src: str, dst: str) -> None:
        bn(f"{src}.bn", f"{dst}.0")
        m[f"{src}.act.weight"] = f"{dst}.1.weight"

    def cbr(src: str, dst: str) -> None:
        m[f"{src}.conv.weight"] = f"{dst}.0.weight"
        bn(f"{src}.bn", f"{dst}.1")
        m[f"{src}.act.weight"] = f"{dst}.2.weight"

    def esp(src: str, dst: str, downsampler: bool) -> None:
        m[f"{src}.c1.conv.weight"] = f"{dst}.reduce.weight"
        for i, d in enumerate((1, 2, 4, 8, 16)):
            m[f"{src}.d{d}.conv.weight"] = f"{dst}.branches.{i}.weight"
        if downsampler:
            bn(f"{src}.bn", f"{dst}.post.0")
            m[f"{src}.act.weight"] = f"{dst}.post.1.weight"
        else:
            br(f"{src}.bn", f"{dst}.post")

    cbr("encoder.level1", "level1")
    br("encoder.b1", "bn1")
    esp("encoder.level2_0", "level2_0", True)
    for i in range(alpha2):
        esp(f"encoder.level2.{i}", f"level2.{i}", False)
    br("encoder.b2", "bn2")
    esp("encoder.level3_0", "level3_0", True)
    for i in range(alpha3):
        esp(f"encoder.level3.{i}", f"level3.{i}", False)
    br("encoder.b3", "bn3")
    m["encoder.classifier.conv.weight"] = "classifier_c.weight"
    # decoder
    m["level3_C.conv.weight"] = "l2_proj.weight"
    bn("br", "l3_bn")
    m["up_l3.0.weight"] = "up3.weight"
    br("combine_l2_l3.0", "merge2.0")
    esp("combine_l2_l3.1", "merge2.1", False)
    m["up_l2.0.weight"] = "up2.0.weight"
    br("up_l2.1", "up2.1")
    cbr("conv", "merge1")
    m["classifier.weight"] = "up1.weight"
    return m


def _count_blocks(state: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(mt.group(1)) for k in state if (mt := pat.match(k))}
    return max(found) + 1 if found else 0


def _fold_bgr(sd: dict[str, torch.Tensor], c: int) -> None:
    """Make the authors' BGR network take RGB, exactly (permutations only). Besides the first convolution,
    ESPNet concatenates the average-pooled image itself into l1 (channels 16..18) and l2 (128..130):
    those channels arrive as RGB, so the BN/PReLU on them and every convolution reading them are permuted."""
    sd["level1.0.weight"] = bgr_to_rgb_first_conv(sd["level1.0.weight"])
    for bnp, start, readers in (("bn1", 16, (("level2_0.reduce.weight", 16), ("merge1.0.weight", c + 16))),
                                ("bn2", 128, (("level3_0.reduce.weight", 128), ("l2_proj.weight", 128)))):
        for k in ("0.weight", "0.bias", "0.running_mean", "0.running_var", "1.weight"):
            sd[f"{bnp}.{k}"] = reverse_channels(sd[f"{bnp}.{k}"], 0, start)
        for key, at in readers:
            sd[key] = reverse_channels(sd[key], 1, at)


def _espnet_authors_detect(state: Mapping[str, torch.Tensor]) -> bool:
    return "encoder.level1.conv.weight" in state and "up_l3.0.weight" in state


def _espnet_authors(state: Mapping[str, torch.Tensor]) -> Imported:
    from ..data.camvid import CAMVID_CLASSES, CAMVID_PALETTE

    alpha2, alpha3 = _count_blocks(state, "encoder.level2"), _count_blocks(state, "encoder.level3")
    ours = remap_keys(state, espnet_authors_key_map(alpha2, alpha3), "espnet_authors")
    c = int(ours["up1.weight"].shape[0])
    if c != len(CAMVID_CLASSES) + 1:
        raise ApdError(f"espnet_authors: the weights have {c} outputs; only the authors' CamVid release "
                       f"({len(CAMVID_CLASSES) + 1} outputs: 11 classes + void) has known classes and "
                       "preprocessing (write an importer for others: docs/checkpoint-format.md)")
    _fold_bgr(ours, c)
    return Imported(
        model_name="espnet", num_classes=c, state_dict=ours, model_kwargs={"alpha2": alpha2, "alpha3": alpha3},
        dataset="camvid", classes=CAMVID_CLASSES + ["void"], extra_classes=["void"],
        palette=CAMVID_PALETTE + [[0, 0, 0]],
        mean=[v / 255 for v in ESPNET_CAMVID_BGR_MEAN[::-1]], std=ESPNET_CAMVID_BGR_STD[::-1],
        crop=[352, 480], input_size=[384, 480], run_name="espnet_camvid_authors",  # 360x480 padded to /32
        source={"paper": "Mehta et al., ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic "
                         "Segmentation, ECCV 2018", "url": "https://github.com/sacmehta/ESPNet",
                "license": "MIT", "published_miou": "57.2 (CamVid test, 11 classes)",
                "notes": "void trained as output 11; BGR input folded into the weights (channel permutations of "
                         "every layer that reads image channels), (x - M) / S / 255 recorded as RGB mean/std"},
    )


register_importer(Importer("espnet_authors", "ESPNet authors' CamVid model (sacmehta/ESPNet, 12 outputs with void)",
                           _espnet_authors_detect, _espnet_authors))


# ------------------------------------------------------------------------------------------------
# Reading a file and writing the run folder
# ------------------------------------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a ``.pth``/``.pt`` file: data-only load on the CPU; unwraps ``state_dict`` /
    ``model`` containers and DataParallel's ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise ApdError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, pickles with code, foreign formats
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApdError(f"cannot read {path} as PyTorch weights ({first[:160]})") from None
    if isinstance(obj, Mapping) and "model_name" in obj and "model" in obj:
        raise ApdError(f"{path} is already an apd-edge checkpoint: use it directly (apd-edge eval/export)")
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise ApdError(f"{path} holds no state dict (a mapping of names to tensors); got {type(obj).__name__}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def get_importer(fmt: str) -> Importer:
    """A registered importer, or ``package.module:attr`` naming an ``Importer`` or a convert function."""
    if ":" not in fmt:
        return IMPORTERS.get(fmt)
    import importlib

    mod, _, attr = fmt.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ApdError(f"--format {fmt!r}: cannot import it ({exc})") from None
    if isinstance(obj, Importer):
        return obj
    if callable(obj):
        return Importer(fmt, f"user importer {fmt}", lambda state: False, obj)
    raise ApdError(f"--format {fmt!r} is neither an Importer nor a function")


def detect_format(state: Mapping[str, torch.Tensor], where: str = "the weights") -> str:
    hits = [imp.name for imp in list_importers() if imp.detect(state)]
    if len(hits) != 1:
        names = ", ".join(IMPORTERS.names())
        what = "matches several formats" if hits else "match no known format"
        raise ApdError(f"{where} {what}; pass --format (available: {names}) or write an importer "
                       "(docs/checkpoint-format.md)")
    return hits[0]


def import_weights(path: str | Path, fmt: str | None = None, *, out: str | Path = "runs", name: str | None = None,
                   data_root: str | None = None, dataset: str | None = None, force: bool = False) -> Path:
    """Import ``path`` (format ``fmt``, detected when None) into ``<out>/<name>/``; returns the run folder.

    ``data_root`` becomes the recipe's data.root (default ``data/<dataset>``, as in recipes/).
    """
    from ..config import DataConfig, ModelConfig, Recipe, recipe_from_dict, recipe_to_dict, save_recipe
    from ..models import build_model
    from ..runtime.manifest import sha256_file
    from ..checkpoint import save_checkpoint
    from .run import point_latest, write_summary

    t0 = time.perf_counter()
    importer = get_importer(fmt) if fmt is not None else None  # unknown names fail before reading the file
    state = read_state_dict(path)
    importer = importer or IMPORTERS.get(detect_format(state, str(path)))
    fmt = importer.name
    imp = importer.convert(state)
    if not isinstance(imp, Imported):
        raise ApdError(f"importer '{fmt}' returned {type(imp).__name__}, expected apd_edge.engine.importers.Imported")
    dataset = dataset or imp.dataset
    if dataset is None:
        raise ApdError(f"format '{fmt}' does not say which dataset the weights were trained for: pass --dataset")
    model = build_model(imp.model_name, imp.num_classes, **imp.model_kwargs)
    load_exact(model, imp.state_dict, f"format '{fmt}' -> {imp.model_name}")
    classes = list(imp.classes) if imp.classes else None
    if classes is not None and (len(classes) != imp.num_classes or classes[len(classes) - len(imp.extra_classes):]
                                != list(imp.extra_classes)):
        raise ApdError(f"importer '{fmt}': classes must name all {imp.num_classes} outputs, extra classes last")

    name = name or imp.run_name
    raw = recipe_to_dict(Recipe(name=name, output_dir=str(out), model=ModelConfig(name=imp.model_name,
                                                                                  kwargs=dict(imp.model_kwargs)),
                                data=DataConfig(dataset=dataset, root=data_root or f"data/{dataset}",
                                                mean=list(imp.mean), std=list(imp.std))))
    raw["distill"]["method"] = "none"
    if imp.crop:
        raw["train"]["crop"] = list(imp.crop)
    if imp.input_size:
        raw["export"]["input_size"] = list(imp.input_size)
    recipe = recipe_from_dict(raw)  # validates names and values
    run_dir = Path(out) / name
    if (run_dir / "best.pt").exists() and not force:
        raise ApdError(f"{run_dir / 'best.pt'} exists: pass --force to overwrite it, or --name for a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    imported = {"format": fmt, "file": str(Path(path).resolve()), "sha256": sha256_file(path), **imp.source}
    payload = {
        "model_name": imp.model_name, "model_kwargs": dict(imp.model_kwargs), "num_classes": imp.num_classes,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "recipe": recipe_to_dict(recipe), "step": 0, "best_miou": None, "best_step": None,
        "classes": classes, "extra_classes": list(imp.extra_classes), "palette": imp.palette,
        "mean": list(imp.mean), "std": list(imp.std), "method": "imported", "imported": imported,
    }
    save_checkpoint(payload, run_dir / "best.pt")
    save_recipe(recipe, run_dir / "recipe.yaml")
    write_summary(run_dir, {
        "name": name, "run_dir": str(run_dir), "model": imp.model_name, "method": "imported",
        "teacher": None, "dataset": dataset, "num_classes": imp.num_classes,
        "extra_classes": list(imp.extra_classes), "params": sum(p.numel() for p in model.parameters()),
        "steps": 0, "iterations": 0, "wall_time_s": time.perf_counter() - t0,
        "final_miou": None, "best_miou": None, "best_step": None, "final_iou": None, "classes": classes,
        "best_checkpoint": str(run_dir / "best.pt"), "last_checkpoint": None, "imported": imported,
    })
    point_latest(run_dir)
    return run_dir
