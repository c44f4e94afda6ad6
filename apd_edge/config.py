"""Recipes: YAML validated into typed dataclasses, with ``--set a.b=c`` overrides.

Every error names the key path (``train.lr``) and, for unknown keys, suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ApdError, suggest

IGNORE_INDEX = 255  # every dataset maps its void label to this value


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """Parse YAML text the way recipes are parsed."""
    return yaml.load(text, Loader=_RecipeLoader)


class RecipeError(ApdError):
    """A recipe that does not validate."""


def _rng(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The model being trained: the student when distilling, the teacher when training one."""

    name: str = "bisenetv2"
    pretrained: bool = False  # ImageNet backbone weights through timm (needs internet once)
    kwargs: dict[str, Any] = field(default_factory=dict)  # model-specific, e.g. {alpha2: 2, alpha3: 8}
    aux_weights: Optional[list[float]] = None  # CE weight of each auxiliary head; None = model default


@dataclass
class TeacherConfig:
    """A frozen teacher: a registry model + checkpoint, or a user factory with a hooked feature module."""

    name: Optional[str] = None  # registry name (e.g. pspnet_r101); None when ``factory`` is used
    checkpoint: Optional[str] = None  # a checkpoint from `apd-edge train`, or a plain state dict
    factory: Optional[str] = None  # "package.module:function" returning an nn.Module
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    feat_module: Optional[str] = None  # dotted module name whose output is the feature map
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra kwargs for build_model


@dataclass
class AugmentConfig:
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    jitter: float = field(default=0.2, metadata=_rng(0.0, 1.0))  # photometric strength
    blur: float = field(default=0.0, metadata=_rng(0.0, 1.0))  # probability of Gaussian blur
    rotate: float = field(default=0.0, metadata=_rng(0.0, 180.0))  # max degrees


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: Optional[str] = None  # dataset folder; None for synthetic
    num_classes: Optional[int] = field(default=None, metadata=_rng(1, None))  # None = dataset's own
    train_split: str = "train"
    val_split: str = "val"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    workers: int = field(default=2, metadata=_rng(0, None))
    options: dict[str, Any] = field(default_factory=dict)  # format-specific options
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    iterations: int = field(default=1000, metadata=_rng(1, None))
    batch_size: int = field(default=8, metadata=_rng(1, None))
    crop: list[int] = field(default_factory=lambda: [512, 1024])  # H, W
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.01, metadata=_rng(0.0, None, lo_open=True))
    momentum: float = field(default=0.9, metadata=_rng(0.0, 1.0))
    weight_decay: float = field(default=5e-4, metadata=_rng(0.0, None))
    warmup_iters: int = field(default=0, metadata=_rng(0, None))
    warmup_ratio: float = field(default=0.1, metadata=_rng(0.0, 1.0))
    poly_power: float = field(default=0.9, metadata=_rng(0.0, None))
    head_lr_mult: float = field(default=10.0, metadata=_rng(0.0, None, lo_open=True))
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # CUDA only; CPU always trains in float32
    grad_clip: Optional[float] = field(default=None, metadata=_rng(0.0, None, lo_open=True))  # max grad norm
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = False
    log_interval: int = field(default=20, metadata=_rng(1, None))
    eval_interval: int = field(default=500, metadata=_rng(1, None))
    ckpt_interval: int = field(default=500, metadata=_rng(1, None))
    sync_bn: bool = True  # under torchrun


@dataclass
class APDConfig:
    """Adaptive Perspective Distillation; defaults are the released configuration (docs/apd-method.md)."""

    pk_weight: float = field(default=10.0, metadata=_rng(0.0, None))  # adaptive-perspective KL
    pa_weight: float = field(default=10.0, metadata=_rng(0.0, None))  # prototype alignment
    tau: float = field(default=10.0, metadata=_rng(0.0, None, lo_open=True))
    proj_dim: int = field(default=512, metadata=_rng(1, None))  # hidden width D
    proj_out: Optional[int] = None  # embedding width E; None = teacher feature channels
    prototype_scope: Literal["batch", "image"] = "batch"
    teacher_proj_lr: float = field(default=1e-5, metadata=_rng(0.0, None, lo_open=True))
    teacher_proj_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class CWDConfig:
    weight: float = field(default=3.0, metadata=_rng(0.0, None))
    temperature: float = field(default=4.0, metadata=_rng(0.0, None, lo_open=True))


@dataclass
class HolisticConfig:
    """SKD's holistic term (also IFVD's): a WGAN-GP critic on score maps with its own optimizer, one critic
    step per student step. Defaults: SKD's release (docs/distillation-baselines.md)."""

    enabled: bool = True
    weight: float = field(default=0.1, metadata=_rng(0.0, None))  # student term: weight * -mean D(student)
    critic_weight: float = field(default=0.1, metadata=_rng(0.0, None, lo_open=True))  # scales the critic's loss
    gp_weight: float = field(default=10.0, metadata=_rng(0.0, None))  # gradient penalty
    with_image: bool = True  # condition the critic on the image (paper); false = score map only (releases)
    channels: int = field(default=64, metadata=_rng(1, None))  # the critic's first conv width
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=4e-4, metadata=_rng(0.0, None, lo_open=True))  # poly-decayed like the student's
    momentum: float = field(default=0.9, metadata=_rng(0.0, 1.0))  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # adam
    weight_decay: float = field(default=5e-4, metadata=_rng(0.0, None))


@dataclass
class IFVDHolisticConfig(HolisticConfig):
    """IFVD's release of the same term: student weight 0.001, Adam (0.9, 0.99), no weight decay."""

    weight: float = field(default=0.001, metadata=_rng(0.0, None))
    optimizer: Literal["sgd", "adam"] = "adam"
    weight_decay: float = field(default=0.0, metadata=_rng(0.0, None))


@dataclass
class SKDConfig:
    """Structured KD (Liu et al.): pixel-wise KL, pair-wise similarity on pooled features, holistic term."""

    pi_weight: float = field(default=10.0, metadata=_rng(0.0, None))  # per-pixel KL (summed over classes)
    pa_weight: float = field(default=0.5, metadata=_rng(0.0, None))  # pair-wise similarity distillation
    pair_pool_scale: float = field(default=0.5, metadata=_rng(0.0, 1.0, lo_open=True))  # node = this share of h, w
    holistic: HolisticConfig = field(default_factory=HolisticConfig)


@dataclass
class IFVDConfig:
    """Intra-class feature variation distillation (Wang et al.); pixel KD uses distill.kd_weight."""

    ifv_weight: float = field(default=200.0, metadata=_rng(0.0, None))
    holistic: IFVDHolisticConfig = field(default_factory=IFVDHolisticConfig)


@dataclass
class DistillConfig:
    method: Literal["apd", "kd", "cwd", "skd", "ifvd", "none"] = "apd"
    kd_weight: float = field(default=10.0, metadata=_rng(0.0, None))  # pixel-wise KD on logits
    kd_temperature: float = field(default=1.0, metadata=_rng(0.0, None, lo_open=True))
    # bilinear upsampling of the pixel-KD logits and of APD's teacher-projector logits to label size; True is
    # the released APD code (CriterionKD, CriterionKmeansInterWhole). The student's own upsampling is unaffected.
    align_corners: bool = True
    apd: APDConfig = field(default_factory=APDConfig)
    cwd: CWDConfig = field(default_factory=CWDConfig)
    skd: SKDConfig = field(default_factory=SKDConfig)
    ifvd: IFVDConfig = field(default_factory=IFVDConfig)


@dataclass
class EvalConfig:
    batch_size: int = field(default=1, metadata=_rng(1, None))
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    sliding_window: Optional[list[int]] = None  # crop H, W; None = whole image (padded to /32)
    sliding_stride: Optional[list[int]] = None  # None = 2/3 of the window


@dataclass
class ExportConfig:
    input_size: Optional[list[int]] = None  # H, W; None = the eval size of the dataset / train crop
    opset: int = field(default=17, metadata=_rng(17, None))
    dynamic: bool = False
    argmax: bool = False
    fp16: bool = True
    int8: bool = True
    calib_images: int = field(default=128, metadata=_rng(1, None))
    calib_method: Literal["auto", "entropy", "minmax", "percentile", "mse"] = "auto"
    int8_target: Optional[float] = field(default=0.5, metadata=_rng(0.0, None))  # max mIoU drop; None = plain INT8
    int8_sensitivity: bool = True
    int8_max_float: float = field(default=0.25, metadata=_rng(0.0, 1.0))
    trt: bool = False
    workspace_gb: float = field(default=4.0, metadata=_rng(0.0, None, lo_open=True))


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    threads: Optional[int] = field(default=None, metadata=_rng(1, None))  # CPU threads; None = the free cores
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return str(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` and return it converted (int -> float where allowed)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except RecipeError:
                pass
        raise RecipeError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(
                f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}"
                f"{suggest(str(value), map(str, choices))}"
            )
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected {_describe(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise RecipeError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported recipe type {tp} at {path}")


def _check_range(value: Any, meta: dict, path: str) -> None:
    rng = meta.get("range")
    if rng is None or value is None:
        return
    lo, hi, lo_open = rng
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise RecipeError(f"{path}: {value} is out of range (must be {'>' if lo_open else '>='} {lo})")
    if hi is not None and value > hi:
        raise RecipeError(f"{path}: {value} is out of range (must be <= {hi})")


def _suggest_path(prefix: str, key: str, names) -> str:
    hint = suggest(str(key), names)
    return hint.replace("mean '", f"mean '{prefix}.") if prefix and hint else hint


def _build(cls: type, data: dict, path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise RecipeError(f"unknown recipe key '{full}'{_suggest_path(path, key, fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
        _check_range(kwargs[key], fields[key].metadata, full)
    return cls(**kwargs)


# a run name is one folder under output_dir: no path separators or control characters, no leading dot
# (".", "..", hidden) or dash (read as an option), not "latest" (the link to the newest run)
_RUN_NAME = re.compile(r"[^./\\\s-][^/\\\x00-\x1f\x7f]{0,127}")


def check_run_name(name: str) -> None:
    """Raise RecipeError unless ``name`` is a safe run folder name."""
    if not _RUN_NAME.fullmatch(name or "") or name == "latest":
        raise RecipeError(f"name: {name!r} is not a valid run name (one folder name: no '/', '\\' or control "
                          "characters, not starting with '.', '-' or a space, at most 128 characters, not 'latest')")


def _cross_check(r: Recipe) -> None:
    check_run_name(r.name)

    def pair(path: str, v: list) -> None:
        if v is not None and len(v) != 2:
            raise RecipeError(f"{path}: expected two values [H, W], got {v}")

    pair("train.crop", r.train.crop)
    pair("export.input_size", r.export.input_size)
    pair("eval.sliding_window", r.eval.sliding_window)
    pair("eval.sliding_stride", r.eval.sliding_stride)
    pair("data.augment.scale", r.data.augment.scale)
    pair("distill.apd.teacher_proj_betas", r.distill.apd.teacher_proj_betas)
    pair("distill.skd.holistic.betas", r.distill.skd.holistic.betas)
    pair("distill.ifvd.holistic.betas", r.distill.ifvd.holistic.betas)
    for key, v in (("data.mean", r.data.mean), ("data.std", r.data.std)):
        if len(v) != 3:
            raise RecipeError(f"{key}: expected three values (R, G, B), got {v}")
    if any(s <= 0 for s in r.data.std):
        raise RecipeError(f"data.std: values must be > 0, got {r.data.std}")
    for key, v in (("train.crop", r.train.crop), ("export.input_size", r.export.input_size)):
        if v is not None and any(x < 32 or x % 32 for x in v):
            raise RecipeError(f"{key}: {v} must be multiples of 32 (>= 32)")
    lo, hi = r.data.augment.scale
    if not 0 < lo <= hi:
        raise RecipeError(f"data.augment.scale: expected 0 < min <= max, got {r.data.augment.scale}")
    if any(s <= 0 for s in r.eval.scales):
        raise RecipeError(f"eval.scales: values must be > 0, got {r.eval.scales}")
    if r.teacher.name and r.teacher.factory:
        raise RecipeError("teacher: set either teacher.name or teacher.factory, not both")


def validate_names(recipe: Recipe) -> None:
    """Check registry names (model.name, teacher.name, data.dataset); imports the registries lazily.

    Kept out of ``load_recipe`` so loading a recipe stays light; ``recipe check`` calls it.
    """
    from .errors import unknown_name

    try:
        from .models import list_models
    except ImportError:  # pragma: no cover - models need torch
        list_models = None
    if list_models is not None:
        names = list_models()
        for path, value in (("model.name", recipe.model.name), ("teacher.name", recipe.teacher.name)):
            if value is not None and value not in names:
                raise RecipeError(f"{path}: {unknown_name('model', value, names)}")
    try:
        from .data.registry import list_datasets

        datasets = list_datasets()
    except ImportError:  # the data registry may be absent or partial in a light install
        return
    if recipe.data.dataset not in datasets:
        raise RecipeError(f"data.dataset: {unknown_name('dataset', recipe.data.dataset, datasets)}")
    from .data.registry import check_options

    check_options(recipe.data.dataset, recipe.data.options)  # through the format class itself


def recipe_from_dict(data: dict | None) -> Recipe:
    """Validate a plain mapping into a Recipe."""
    recipe = _build(Recipe, data or {})
    _cross_check(recipe)
    return recipe


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key=value, e.g. train.lr=0.01")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _leaf_value(tp: Any, raw: str, parsed: Any) -> Any:
    """Strings stay as typed (``name=123`` is the string "123"); everything else is parsed YAML."""
    if tp is str or (typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp)):
        return None if raw == "null" else raw
    if isinstance(parsed, str) and (tp is float or float in typing.get_args(tp)):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(parsed)
        except ValueError:
            pass
    return parsed


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=c`` overrides to a raw mapping (values parsed as YAML, then type-checked)."""
    _drop_stale_options(data, overrides)
    for item in overrides:
        keys, value = _parse_override(item)
        node, cls = data, Recipe
        for i, k in enumerate(keys):
            path = ".".join(keys[: i + 1])
            names = {f.name for f in dataclasses.fields(cls)} if cls is not None else None
            if names is not None and k not in names:
                raise RecipeError(f"--set: unknown recipe key '{path}'{_suggest_path('.'.join(keys[:i]), k, names)}")
            if i == len(keys) - 1:
                if cls is not None:
                    value = _leaf_value(typing.get_type_hints(cls)[k], item.split("=", 1)[1], value)
                node[k] = value
            else:
                if cls is not None:
                    tp = typing.get_type_hints(cls)[k]
                    if not dataclasses.is_dataclass(tp) and typing.get_origin(tp) is not dict:
                        raise RecipeError(f"--set: '{path}' is not a section")
                child = node.get(k)
                if child is None:
                    child = node[k] = {}
                if not isinstance(child, dict):
                    raise RecipeError(f"--set: '{path}' is not a section")
                node = child
                if cls is not None:
                    cls = tp if dataclasses.is_dataclass(tp) else None
    return data


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a YAML recipe (a file, or the name of a packaged recipe), apply overrides and validate it."""
    from .recipebook import resolve_recipe

    path = resolve_recipe(path)
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    data.setdefault("name", path.stem)
    return recipe_from_dict(apply_overrides(data, overrides))


def _drop_stale_options(data: dict, overrides: list[str] | tuple[str, ...]) -> None:
    """``--set data.dataset=X`` switching formats drops the file's ``data.options`` (they belong to the old
    format) with a note on stderr; options set on the command line are kept."""
    section = data.get("data")
    if not isinstance(section, dict) or not section.get("options"):
        return
    new = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "data.dataset" and "=" in o]
    if new:
        drop_stale_options(data, new[-1], f"--set data.dataset={new[-1]}")


def drop_stale_options(data: dict, new_dataset: str, why: str) -> None:
    """Clear a raw recipe's ``data.options`` when ``data.dataset`` becomes ``new_dataset`` (a note on stderr)."""
    section = data.get("data")
    if not isinstance(section, dict) or not section.get("options"):
        return
    old = section.get("dataset", DataConfig.dataset)
    if new_dataset == old:
        return
    import sys

    dropped = ", ".join(map(str, section["options"]))
    section["options"] = {}
    print(f"note: {why}: dropped data.options ({dropped}) of '{old}'; "
          f"set the new dataset's with --set data.options.KEY=VALUE", file=sys.stderr)


def recipe_to_dict(recipe: Recipe) -> dict:
    """A plain (YAML/JSON-serialisable) mapping of a recipe."""
    return dataclasses.asdict(recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(recipe_to_yaml(recipe))
