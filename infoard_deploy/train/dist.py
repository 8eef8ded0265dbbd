"""DistributedDataParallel helpers for runs launched with ``torchrun`` (env RANK / WORLD_SIZE / LOCAL_RANK).

Backend: NCCL on CUDA, gloo on CPU. Everything degrades to no-ops when ``WORLD_SIZE`` is unset or 1,
so the trainer has one code path. Only rank 0 writes files and prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False  # this process initialised the group (and so destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE must be an integer, got '{os.environ.get('WORLD_SIZE')}'") from None


def init_distributed(dev: torch.device) -> DistInfo:
    """Join the process group torchrun describes; returns ranks (world 1 when not launched by torchrun)."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://")
        created = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, created=created)


def rank_device(dev: torch.device, info: DistInfo) -> torch.device:
    """Under DDP each process drives the GPU of its LOCAL_RANK."""
    if info.enabled and dev.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return dev


def cleanup(info: DistInfo) -> None:
    if info.created and dist.is_initialized():
        # All ranks leave together: a rank that tears gloo down while its peer is still inside a
        # collective aborts the peer ("terminate called without an active exception").
        try:
            dist.barrier()
        except Exception:  # a peer already died; the launcher reports it
            pass
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_sum(values: List[float], info: DistInfo, dev: torch.device) -> List[float]:
    """Sum a few scalars over ranks (float64, so counts stay exact)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_flag(flag: bool, info: DistInfo, dev: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a non-finite loss)."""
    if not info.enabled:
        return flag
    return all_sum([1.0 if flag else 0.0], info, dev)[0] > 0


def broadcast_params(params: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Make rank 0's values authoritative (method heads are outside DDP's own initial broadcast)."""
    if not info.enabled:
        return
    for p in params:
        dist.broadcast(p.data, src=0)


def average_grads(params: Iterable[nn.Parameter], info: DistInfo) -> None:
    """All-reduce-mean the grads of parameters DDP does not manage (the method's MIM heads).

    Every rank runs the same code, so the set of parameters with a gradient is the same everywhere;
    the grads are flattened into one buffer to make it a single collective.
    """
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n


def wrap_ddp(model: nn.Module, info: DistInfo, dev: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dev.index] if dev.type == "cuda" else None
    return DDP(model, device_ids=ids)
