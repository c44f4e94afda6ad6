"""Torch DataLoaders over SegDatasets: workers, pinned memory, persistent workers, distributed sampling.

Augmentation randomness comes from one numpy Generator per worker, seeded from the worker's torch
seed, which the loader's own generator (seeded by ``recipe.seed``) fixes: the same seed and worker
count give the same batches.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from ..config import IGNORE_INDEX, Recipe
from ..errors import ApdError
from .base import SegDataset
from .registry import build_dataset
from .transforms import EvalTransform, TrainTransform


class TorchSegDataset(Dataset):
    """Wraps a SegDataset with a transform; returns (float32 3xHxW tensor, int64 HxW tensor)."""

    def __init__(self, ds: SegDataset, transform, seed: int = 0) -> None:
        self.ds, self.transform, self.seed = ds, transform, seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.ds)

    def _generator(self) -> np.random.Generator:
        if self._rng is None:  # first use in this process: a worker seeds from its torch seed
            info = get_worker_info()
            self._rng = np.random.default_rng(info.seed if info is not None else self.seed)
        return self._rng

    def __getitem__(self, i: int):
        img, mask = self.ds[i]
        img, mask = self.transform(img, mask, self._generator())
        return torch.from_numpy(img), torch.from_numpy(mask)


class _Subset:
    """The images ``indices`` of a SegDataset, with its attributes (classes, palette, root) passed through."""

    def __init__(self, ds: SegDataset, indices: list[int]) -> None:
        self.ds, self.indices = ds, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.ds[self.indices[i]]

    def paths(self, i: int):
        return self.ds.paths(self.indices[i])

    def __getattr__(self, name: str):
        return getattr(self.ds, name)


def _worker_init(worker_id: int) -> None:
    # Each worker decodes/augments on one core. Thread pools are NOT reconfigured here: a forked child
    # that calls cv2.setNumThreads or torch.set_num_threads waits forever on pool threads that exist only
    # in the parent. torch already gives workers one intra-op thread, and build_loader turns OpenCV's
    # pool off in the parent before any worker forks.
    np.random.seed(get_worker_info().seed % 2**32)  # for any third-party code using the global RNG


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank r takes indices r, r + W, ... so every image is scored once.

    (DistributedSampler pads with repeats, which would count some images twice in a summed confusion matrix.)
    """

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def pad_collate(batch):
    """Stack samples, padding differently sized ones (image 0, label 255) to the largest in the batch."""
    imgs, labels = zip(*batch)
    h = max(t.shape[-2] for t in imgs)
    w = max(t.shape[-1] for t in imgs)
    if all(t.shape[-2:] == (h, w) for t in imgs):
        return torch.stack(imgs), torch.stack(labels)
    out_i = imgs[0].new_zeros((len(imgs), 3, h, w))
    out_l = labels[0].new_full((len(labels), h, w), IGNORE_INDEX)
    for k, (im, lb) in enumerate(zip(imgs, labels)):
        out_i[k, :, : im.shape[-2], : im.shape[-1]] = im
        out_l[k, : lb.shape[-2], : lb.shape[-1]] = lb
    return out_i, out_l


def build_loader(recipe: Recipe, split: str, train: bool, batch_size: int | None = None,
                 distributed: bool = False, indices: list[int] | None = None) -> DataLoader:
    """A DataLoader over ``recipe.data`` split ``split``: augmented crops when ``train``, whole images otherwise.

    ``indices`` keeps only those images of the split, in that order (see data.scoring)."""
    d = recipe.data
    ds = build_dataset(d, split)
    if indices is not None:
        ds = _Subset(ds, indices)
    if train:
        transform = TrainTransform(recipe.train.crop, d.augment, d.mean, d.std)
        bs = batch_size or recipe.train.batch_size
    else:
        transform = EvalTransform(d.mean, d.std)
        bs = batch_size or recipe.eval.batch_size
    world = torch.distributed.get_world_size() if distributed and torch.distributed.is_initialized() else 1
    if train and len(ds) < bs * world:
        raise ApdError(f"split '{split}' of dataset '{d.dataset}' has {len(ds)} images, fewer than one batch "
                       f"({bs} x {world} process(es)); lower train.batch_size")
    wrapped = TorchSegDataset(ds, transform, seed=recipe.seed)
    sampler = None
    if distributed and train:
        # the engine calls loader.sampler.set_epoch(epoch) so each epoch reshuffles
        sampler = DistributedSampler(wrapped, shuffle=True, seed=recipe.seed, drop_last=True)
    elif distributed and world > 1:
        sampler = ShardSampler(len(wrapped), torch.distributed.get_rank(), world)
    gen = torch.Generator()
    gen.manual_seed(recipe.seed)
    workers = d.workers
    if workers > 0:
        # OpenCV's pthread pool does not survive fork(); with threads off there is no pool to inherit.
        # Decoding runs in the workers, so the parent loses nothing it uses.
        cv2.setNumThreads(0)
    return DataLoader(
        wrapped,
        batch_size=bs,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        drop_last=train,
        collate_fn=pad_collate,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=gen,
    )
