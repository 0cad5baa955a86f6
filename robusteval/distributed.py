"""Sharding blocks of samples over processes with torch.distributed.

``torchrun --nproc-per-node N -m robusteval run ...`` starts N processes with ``RANK`` and
``WORLD_SIZE`` set; each evaluates every N-th block and rank 0 gathers the per-sample records.
Because each block's seed is derived from the run's seed and the block's first row, the
gathered records equal a single-process run's sample for sample.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .results import SampleRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the group: ``rank`` of ``world_size``; rank 0 is the main one."""

    rank: int
    world_size: int
    active: bool

    @classmethod
    def single(cls) -> DistributedContext:
        """Return the context of a run in one process."""
        return cls(rank=0, world_size=1, active=False)

    @classmethod
    def from_environment(cls, device: str = "cpu") -> DistributedContext:
        """Join the process group that ``torchrun`` describes, or return :meth:`single`.

        The backend is NCCL for CUDA devices and gloo otherwise.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls.single()
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            logger.info("Joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), active=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather_blocks(
        self, records: list[SampleRecord], extras: dict[str, Any]
    ) -> tuple[list[SampleRecord], dict[str, Any]]:
        """Gather every rank's records and block extras on rank 0; other ranks get their own back."""
        if not self.active:
            return records, extras
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object((records, extras), gathered, dst=0)
        if not self.is_main:
            return records, extras

        from .pipeline import _merge_extra

        all_records: list[SampleRecord] = []
        all_extras: dict[str, Any] = {}
        for rank_records, rank_extras in gathered or []:
            all_records.extend(rank_records)
            _merge_extra(all_extras, rank_extras)
        return all_records, all_extras

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def cuda_device_for_rank(device: str, context: DistributedContext) -> str:
    """Return the CUDA device a rank should use: ``cuda:LOCAL_RANK`` when ``device`` is plain ``cuda``."""
    if device == "cuda" and context.active:
        local_rank = int(os.environ.get("LOCAL_RANK", context.rank))
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device
