"""``check_dataset``: read every file of each split, validate it and count class pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig, IGNORE_INDEX, load_recipe
from ..errors import ApdError
from .registry import build_dataset, list_datasets


@dataclass
class SplitReport:
    name: str
    images: int
    sizes: dict[tuple[int, int], int]  # (H, W) -> count
    bad: int = 0


@dataclass
class CheckReport:
    dataset: str
    root: str | None
    class_names: list[str]
    splits: list[SplitReport] = field(default_factory=list)
    pixels: np.ndarray | None = None  # per class, over all checked splits
    void: int = 0
    bad: list[str] = field(default_factory=list)  # one message per bad sample, at most ``max_errors``
    bad_count: int = 0  # all bad samples, listed or not

    def bad_lines(self) -> list[str]:
        more = self.bad_count - len(self.bad)
        return [f"  {m}" for m in self.bad] + ([f"  ... and {more} more" if more else ""] if more else [])

    def raise_if_bad(self) -> None:
        if self.bad_count:
            first = self.bad[0] if self.bad else ""
            what = f"{self.bad_count} bad file{'s' if self.bad_count > 1 else ''}"
            raise ApdError(first if self.bad_count == 1 else f"{what} in {self.dataset} (listed above)")

    def table(self) -> str:
        """Summary lines and a per-class pixel frequency table."""
        lines = [f"dataset {self.dataset}" + (f" at {self.root}" if self.root else "") +
                 f": {len(self.class_names)} classes"]
        for s in self.splits:
            common = sorted(s.sizes.items(), key=lambda kv: -kv[1])
            sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in common[:4]) + (", ..." if len(common) > 4 else "")
            valid = "all valid" if not s.bad else f"{s.bad} bad"
            lines.append(f"  {s.name}: {s.images} images, {valid}; sizes {sizes}")
        pix = self.pixels if self.pixels is not None else np.zeros(len(self.class_names), np.int64)
        total = int(pix.sum()) + self.void
        width = max([len(n) for n in self.class_names] + [5])
        lines.append(f"{'id':>3}  {'class':<{width}}  {'pixels':>12}  {'share':>7}")
        for k, name in enumerate(self.class_names):
            lines.append(f"{k:>3}  {name:<{width}}  {int(pix[k]):>12}  {100 * pix[k] / max(total, 1):6.2f}%")
        lines.append(f"{IGNORE_INDEX:>3}  {'void':<{width}}  {self.void:>12}  {100 * self.void / max(total, 1):6.2f}%")
        absent = [n for k, n in enumerate(self.class_names) if pix[k] == 0]
        if absent:
            lines.append(f"classes with no pixels: {', '.join(absent)}")
        return "\n".join(lines)


def parse_spec(spec: str) -> DataConfig:
    """A recipe file (its ``data`` section) or ``DATASET:ROOT`` (``synthetic`` alone needs no root)."""
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        return load_recipe(path).data
    name, _, root = spec.partition(":")
    if name not in list_datasets():
        from ..errors import unknown_name

        raise unknown_name("dataset", name, list_datasets())
    if not root and name != "synthetic":
        raise ApdError(f"'{spec}': expected DATASET:ROOT, e.g. {name}:path/to/{name}, or a recipe file")
    return DataConfig(dataset=name, root=root or None)


def check_dataset(data: DataConfig | str, splits: list[str] | None = None, progress: bool = True,
                  max_errors: int | None = None) -> CheckReport:
    """Read every image and mask of each split (default: train and val split of the config).

    ``max_errors=None``: raise ApdError at the first bad sample. Otherwise go on through every sample and
    record the bad ones in ``report.bad`` (the first ``max_errors`` messages) and ``report.bad_count``.
    """
    from tqdm import tqdm

    cfg = parse_spec(data) if isinstance(data, str) else data
    names = splits or [cfg.train_split, cfg.val_split]
    report: CheckReport | None = None
    counts = np.zeros(256, np.int64)
    for split in names:
        ds = build_dataset(cfg, split)
        if report is None:
            report = CheckReport(cfg.dataset, cfg.root, list(ds.class_names))
        sizes: dict[tuple[int, int], int] = {}
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
            counts += np.bincount(mask.ravel(), minlength=256)
        report.splits.append(SplitReport(split, len(ds), sizes, n_bad))
    assert report is not None
    report.pixels = counts[: len(report.class_names)].copy()
    report.void = int(counts[IGNORE_INDEX])
    return report
