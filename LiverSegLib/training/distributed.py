"""Multi-process training through PyTorch's own engine (``torchrun``): process group, ranks, agreement checks.

``torchrun --nproc-per-node N -m LiverSegLib train ...`` starts N processes with ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` set; each joins one process group (NCCL on GPUs, gloo on CPU) and wraps its networks in
:class:`~torch.nn.parallel.DistributedDataParallel`. Without those variables everything runs in one process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "barrier", "broadcast_buffers", "weights_digest", "gather_objects",
           "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    Returns:
        The rank information and the device to use (``cuda:LOCAL_RANK`` on GPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank.

    DistributedDataParallel keeps parameters identical by averaging gradients, but each rank updates its running
    statistics from its own batches; broadcasting them before a checkpoint makes the ranks' models identical.
    """
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def weights_digest(module: nn.Module) -> str:
    """sha256 of all parameters and buffers (bit-exact comparison of models across ranks)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (a list with one entry in a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
