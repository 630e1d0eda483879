"""Multi-process training with ``torch.distributed``: process-group setup and the few collectives
the training loop needs.

``torchrun --nproc_per_node N -m fastvae train ...`` (or ``python -m torch.distributed.run``)
starts N processes and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment;
:func:`setup` reads them and joins the process group: NCCL when training on CUDA (each process
on the GPU ``cuda:LOCAL_RANK``), Gloo on the CPU. Without those variables (or with
``WORLD_SIZE=1``) nothing is initialized and every collective here is the identity, so the
training loop has one code path.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # True when setup() created the process group (close() ends it)

    @property
    def enabled(self) -> bool:
        """True when a process group was initialized (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` reduced over all ranks, in place and returned; ``op``: "sum", "min" or "max"."""
        if self.enabled:
            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                                   "max": dist.ReduceOp.MAX}[op])
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        """The picklable ``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def raise_if_main_failed(self, error: BaseException | None) -> None:
        """Rank 0 passes the exception it hit (or None), the other ranks pass None: if rank 0
        failed, every rank raises (rank 0 its own exception), instead of the others waiting
        forever in the next collective."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        message = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(message, src=0)
        if error is not None:
            raise error
        if message[0] is not None:
            raise RuntimeError(f"rank 0 stopped the job: {message[0]}")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """End the process group if :func:`setup` created it (a caller's own group is kept)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> Distributed:
    """Join the process group that torchrun describes in the environment, if any.

    Args:
        device: the device asked for (already resolved: "cpu", "cuda" or "cuda:K"). Under
            torchrun with CUDA, each process takes ``cuda:LOCAL_RANK`` instead, and the
            backend is NCCL; on the CPU it is Gloo.

    Returns:
        :class:`Distributed` with this process's rank, the world size and its device.

    Raises:
        ValueError: the environment asks for more processes per node than there are GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most that many processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), device, owns_group)
