"""``check_dataset``: read every file of each split, validate it and count class pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig, IGNORE_INDEX, load_recipe
from ..errors import ApdError
from .registry import build_dataset, list_datasets


VOID_WARN = 0.5  # warn when more than this share of a split's pixels is void


@dataclass
class SplitReport:
    name: str
    images: int
    sizes: dict[tuple[int, int], int]  # (H, W) -> count
    pixels: np.ndarray | None = None  # per class
    void: int = 0
    all_void_images: int = 0
    bad: int = 0

    def warnings(self, class_names: list[str]) -> list[str]:
        out = []
        pix = self.pixels if self.pixels is not None else np.zeros(len(class_names), np.int64)
        total = int(pix.sum()) + self.void
        if total and self.void / total > VOID_WARN:
            out.append(f"{self.name}: {100 * self.void / total:.1f}% of pixels are void (255): are the masks read "
                       f"with the right label mapping (classes file, ignore_index, mask_suffix)?")
        if self.all_void_images:
            out.append(f"{self.name}: {self.all_void_images} of {self.images} images are entirely void")
        absent = [n for k, n in enumerate(class_names) if pix[k] == 0]
        if absent:
            out.append(f"{self.name}: {len(absent)} classes with no pixels: {', '.join(absent)}")
        return out


@dataclass
class CheckReport:
    dataset: str
    root: str | None
    class_names: list[str]
    splits: list[SplitReport] = field(default_factory=list)

    @property
    def pixels(self) -> np.ndarray:
        """Per-class pixels over all checked splits."""
        return sum((s.pixels for s in self.splits if s.pixels is not None), np.zeros(len(self.class_names), np.int64))

    @property
    def void(self) -> int:
        return sum(s.void for s in self.splits)

    def warnings(self) -> list[str]:
        return [w for s in self.splits for w in s.warnings(self.class_names)]
    bad: list[str] = field(default_factory=list)  # one message per bad sample, at most ``max_errors``
    bad_count: int = 0  # all bad samples, listed or not

    def bad_lines(self) -> list[str]:
        more = self.bad_count - len(self.bad)
        return [f"  {m}" for m in self.bad] + ([f"  ... and {more} more"] if more else [])

    def raise_if_bad(self) -> None:
        if self.bad_count:
            first = self.bad[0] if self.bad else ""
            what = f"{self.bad_count} bad file{'s' if self.bad_count > 1 else ''}"
            raise ApdError(first if self.bad_count == 1 else f"{what} in {self.dataset} (listed above)")

    def table(self) -> str:
        """Summary lines, one per-class pixel table per split (sizes are H x W), then the warnings."""
        lines = [f"dataset {self.dataset}" + (f" at {self.root}" if self.root else "") +
                 f": {len(self.class_names)} classes"]
        for s in self.splits:
            common = sorted(s.sizes.items(), key=lambda kv: -kv[1])
            sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in common[:4]) + (", ..." if len(common) > 4 else "")
            valid = "all readable" if not s.bad else f"{s.bad} bad"
            lines.append(f"  {s.name}: {s.images} images, {valid}; sizes (H x W) {sizes}")
        from ..tables import text_table

        for s in self.splits:
            pix = s.pixels if s.pixels is not None else np.zeros(len(self.class_names), np.int64)
            total = int(pix.sum()) + s.void
            lines.append("")
            lines.append(f"split {s.name} ({s.images} images)")
            rows = [[k, name, int(pix[k]), f"{100 * pix[k] / max(total, 1):6.2f}%"]
                    for k, name in enumerate(self.class_names)]
            rows.append([IGNORE_INDEX, "void", s.void, f"{100 * s.void / max(total, 1):6.2f}%"])
            lines.append(text_table(["id", "class", "pixels", "share"], rows, align="rlrr", rule=False))
        warnings = self.warnings()
        lines.append("")
        lines.extend(f"warning: {w}" for w in warnings)
        if not warnings:
            lines.append("no warnings")
        return "\n".join(lines)


def parse_spec(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> DataConfig:
    """A recipe file (its ``data`` section) or ``DATASET:ROOT`` (``synthetic`` alone needs no root), with
    ``--set data.options.KEY=VALUE``-style overrides."""
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        return load_recipe(path, overrides).data
    name, _, root = spec.partition(":")
    if not root and name not in list_datasets():
        from ..recipebook import packaged_recipes

        if name in packaged_recipes():  # a packaged recipe's name, e.g. bisenet_camvid
            return load_recipe(name, overrides).data
    if name not in list_datasets():
        from ..errors import unknown_name

        raise unknown_name("dataset", name, list_datasets())
    if not root and name != "synthetic":
        raise ApdError(f"'{spec}': expected DATASET:ROOT, e.g. {name}:path/to/{name}, or a recipe file")
    if overrides:
        from ..config import apply_overrides, recipe_from_dict

        return recipe_from_dict(apply_overrides({"data": {"dataset": name, "root": root or None}}, overrides)).data
    return DataConfig(dataset=name, root=root or None)


def check_dataset(data: DataConfig | str, splits: list[str] | None = None, progress: bool = True,
                  overrides: list[str] | tuple[str, ...] = (), max_errors: int | None = None) -> CheckReport:
    """Read every image and mask of each split (default: train and val split of the config).

    ``max_errors=None``: raise ApdError at the first bad sample. Otherwise go on through every sample and
    record the bad ones in ``report.bad`` (the first ``max_errors`` messages) and ``report.bad_count``.
    """
    from tqdm import tqdm

    cfg = parse_spec(data, overrides) if isinstance(data, str) else data
    names = splits or [cfg.train_split, cfg.val_split]
    report: CheckReport | None = None
    for split in names:
        ds = build_dataset(cfg, split)
        if report is None:
            report = CheckReport(cfg.dataset, cfg.root, list(ds.class_names))
        sizes: dict[tuple[int, int], int] = {}
        counts = np.zeros(256, np.int64)
        all_void = 0
        n_bad = 0
        for i in tqdm(range(len(ds)), desc=f"{cfg.dataset}/{split}", unit="img", disable=not progress, leave=False):
            try:
                _, mask = ds[i]  # decoding, size and value checks raise ApdError naming the file
            except ApdError as exc:
                if max_errors is None:
                    raise
                n_bad += 1
                report.bad_count += 1
                if len(report.bad) < max_errors:
                    report.bad.append(str(exc))  # the message names the file
                continue
            sizes[mask.shape[:2]] = sizes.get(mask.shape[:2], 0) + 1
            c = np.bincount(mask.ravel(), minlength=256)
            all_void += int(c[IGNORE_INDEX] == mask.size)
            counts += c
        report.splits.append(SplitReport(split, len(ds), sizes, counts[: len(report.class_names)].copy(),
                                         int(counts[IGNORE_INDEX]), all_void, n_bad))
    assert report is not None
    return report


def describe_splits(cfg: DataConfig, splits: list[str] | None = None) -> list[str]:
    """Build each split (lists files, decodes nothing): one line per split, or why files were not read."""
    if cfg.root is None and cfg.dataset != "synthetic":
        return []
    if cfg.root is not None and not Path(cfg.root).exists():
        return [f"data.root {cfg.root} does not exist here: options checked, files not read"]
    lines = []
    for split in splits or [cfg.train_split, cfg.val_split]:
        ds = build_dataset(cfg, split)
        lines.append(f"data {split}: {len(ds)} images, {ds.num_classes} classes ({cfg.dataset})")
    return lines
