"""All distributed code: process-group set-up under torchrun and the few collectives the stages use.

Every helper works at world size 1 without a process group, so each stage runs unchanged in a
notebook, under `python -m`, or under `torchrun`. NCCL on GPUs, gloo on the CPU. Metrics reduce sums
(nats, tokens, bytes), never averages of averages.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Ranks:
    """Which slices of the windows this process scores and adapts: real ranks times virtual ranks.

    The run splits windows into contiguous slices, one per GPU, and its dynamic eval adapts one
    copy of the weights per slice, so its number depends on the rank count. To reproduce 8 GPUs on
    fewer processes, `virtual` = 8 emulates them: process r of W handles virtual ranks v with
    v % W == r, each from its own copy of the weights. `virtual=None`: each process is one rank.
    Passes without rank-local state (non-overlapping, sliding) split by real ranks only: their sums
    do not depend on the split.
    """

    rank: int = 0
    world: int = 1
    virtual: int | None = None

    @classmethod
    def current(cls, virtual: int | None = None) -> "Ranks":
        if virtual is not None and virtual < 1:
            raise ValueError(f"virtual ranks {virtual}: must be a positive number")
        return cls(rank(), world_size(), virtual)

    @property
    def total(self) -> int:
        """Ranks emulated (the number the result depends on)."""
        return self.virtual or self.world

    def mine(self) -> list[int]:
        """The (virtual) rank ids this process handles."""
        if not self.virtual:
            return [self.rank]
        return [v for v in range(self.virtual) if v % self.world == self.rank]

    def real(self) -> "Ranks":
        """The same processes without virtual ranks (for passes whose sums do not depend on the split)."""
        return Ranks(self.rank, self.world, None)

    def describe(self) -> dict:
        return {"real_ranks": self.world, "virtual_ranks": self.virtual or 0, "ranks": self.total}


SINGLE = Ranks()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init_context(device: str | None = None) -> Context:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run alone.

    `device`: "cuda", "cpu" or None (CUDA when available). The environment is read here, at call
    time, never at import.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no GPU: pass --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    r = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not active():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=30),
                                device_id=dev if use_cuda else None)
    return Context(rank=r, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: list[float]) -> list[float]:
    """Sum each value over ranks, in float64."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def max_over_ranks(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_objects(obj) -> list:
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(t: torch.Tensor, average: bool = False) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if average:
            t.div_(dist.get_world_size())
    return t
