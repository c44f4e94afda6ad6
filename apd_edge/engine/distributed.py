"""Distributed helpers: process-group set-up under torchrun, rank queries, small collectives.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the group is initialised with
NCCL on CUDA and gloo on CPU. Without those variables everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    initialised_here: bool = False  # we created the group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda (this process's local GPU) if available, else cpu."""
    from ..errors import ApdError

    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        pref = f"cuda:{local_rank}"
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise ApdError(f"train.device: '{pref}' is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ApdError(f"train.device: '{pref}' requested but CUDA is not available on this machine")
    return device


def init_distributed(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; return (info, this process's device)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        info = DistInfo(rank, world, local, world > 1, False)
        return info, resolve_device(device_pref, local)
    world = env_world_size()
    if world <= 1:
        return DistInfo(), resolve_device(device_pref, 0)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, True, True), device


def cleanup(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average a dict of scalars over ranks (same keys on every rank)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks in lock-step on errors)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def average_gradients(params: Iterable[nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the gradients of parameters that DDP does not manage (e.g. projectors).

    Every rank must call this with the same parameters in the same order. A parameter without a
    gradient on this rank contributes zeros, so ranks stay in step.
    """
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_parameters(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (for modules outside DDP)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def convert_sync_bn(model: nn.Module, device: torch.device, info: DistInfo, log=print) -> nn.Module:
    """SyncBatchNorm on CUDA only (gloo has no SyncBN support); logs when skipped."""
    if not info.enabled:
        return model
    if device.type != "cuda":
        log("sync_bn: skipped on CPU (SyncBatchNorm needs CUDA); each process keeps its own BN statistics")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
