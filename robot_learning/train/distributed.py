"""Process-group bookkeeping for ``torchrun`` (DDP), shared by the training loop and RL learners."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from robot_learning.policies.checkpoint import resolve_device


class Distributed:
    """A no-op for one process, gloo/nccl under ``torchrun``."""

    def __init__(self, device_name: str, timeout_s: float = 600.0) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_name)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(
                "nccl" if self.device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
            )

    @property
    def main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.world > 1:
            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when there are several processes, else itself."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self, ok: bool) -> None:
        """Leave the process group: all together after success; after an error, without waiting for the others."""
        if self.world > 1 and dist.is_initialized() and ok:
            # Every process reaches the barrier before any tears its connections down; destroying while a peer
            # is still in a collective is a known gloo/nccl hang (pytorch#75097).
            dist.barrier()
            dist.destroy_process_group()
        # After an error the group is left to process exit: a collective teardown could wait on a peer that is
        # itself stuck in a collective, and torchrun stops the other processes anyway.
