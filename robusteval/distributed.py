"""Sharding blocks of samples over processes with torch.distributed.

``torchrun --nproc-per-node N -m robusteval run ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each process evaluates every N-th block of samples, and
rank 0 gathers the per-sample records and computes every aggregate from them. Each block's seeds
are derived from the run's seed and the block's first row, never from the rank, so the gathered
records equal those of a single-process run sample for sample.

The backend is gloo on the CPU and NCCL on CUDA devices. Every collective call waits at most
``timeout_seconds``. A peer that exits or hangs makes the waiting ranks raise
:class:`~robusteval.errors.DistributedError` instead of blocking forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import DistributedError
from .results import SampleRecord

logger = logging.getLogger(__name__)

# torch.distributed's own default for gloo. A collective waits for the slowest rank, so the
# limit must cover the largest imbalance between shards, for example when a resumed run finds
# all of one rank's blocks on disk and none of another's.
DEFAULT_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the group: ``rank`` of ``world_size``; rank 0 is the main one.

    Attributes:
        rank: Global rank, from ``RANK``.
        world_size: Number of processes in the group, from ``WORLD_SIZE``.
        active: Whether a process group was joined; false for a run in one process.
        local_rank: Rank on this machine, from ``LOCAL_RANK``; it numbers the GPU a process uses.
        timeout_seconds: Limit on joining the group and on each collective call.
    """

    rank: int
    world_size: int
    active: bool
    local_rank: int = 0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def single(cls) -> DistributedContext:
        """Return the context of a run in one process."""
        return cls(rank=0, world_size=1, active=False)

    @classmethod
    def from_environment(cls, device: str = "cpu", *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> DistributedContext:
        """Join the process group that ``torchrun`` describes, or return :meth:`single`.

        With ``WORLD_SIZE`` above 1, a CUDA ``device`` selects the GPU of this process (see
        :func:`cuda_device_for_rank`) and the group uses NCCL; any other device uses gloo.

        Raises:
            ValueError: the environment variables or ``device`` do not describe a valid group.
            DistributedError: the group could not be joined within ``timeout_seconds``.
        """
        if timeout_seconds <= 0:
            raise ValueError(f"Expected a positive timeout in seconds, but got {timeout_seconds}.")
        world_size = _environment_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return cls.single()
        rank = _environment_int("RANK", None)
        local_rank = _environment_int("LOCAL_RANK", rank)
        if not 0 <= rank < world_size:
            raise ValueError(f"Expected RANK in [0, {world_size - 1}] for WORLD_SIZE={world_size}, but got RANK={rank}.")

        cuda = device.startswith("cuda")
        if cuda:
            cuda_device_for_rank(device, local_rank, _environment_int("LOCAL_WORLD_SIZE", 1))
        backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds))
            except ValueError as error:
                raise ValueError(f"Could not join the process group of rank {rank}: {error}") from None
            except RuntimeError as error:
                raise DistributedError(
                    f"Rank {rank} of {world_size} could not join the {backend} process group within "
                    f"{timeout_seconds:g} s: {_first_line(error)}. Check that all {world_size} processes started "
                    "and can reach MASTER_ADDR:MASTER_PORT."
                ) from None
            logger.info("Joined process group: rank %d of %d (%s)", rank, world_size, backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), active=True,
                   local_rank=local_rank, timeout_seconds=timeout_seconds)

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0, which writes the results."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank arrives here; raise DistributedError when one does not in time."""
        if self.active:
            with self._collective("waiting for the other ranks"):
                dist.barrier()

    def run_on_main(self, action: Callable[[], None]) -> None:
        """Run ``action`` on rank 0 alone, then raise its error, if any, on every rank.

        The other ranks wait for rank 0 here, so they never read what ``action`` prepares
        before it exists, and a rank 0 that gives up stops every rank at once.

        Raises:
            Exception: on rank 0, the error ``action`` raised.
            DistributedError: on the other ranks, when ``action`` failed on rank 0.
        """
        error: BaseException | None = None
        if self.is_main:
            try:
                action()
            except Exception as caught:  # noqa: BLE001 - re-raised below on every rank
                error = caught
        if self.active:
            message = [None if error is None else f"{type(error).__name__}: {error}"]
            with self._collective("waiting for rank 0 to prepare the run"):
                dist.broadcast_object_list(message, src=0)
            if not self.is_main and message[0] is not None:
                raise DistributedError(f"Rank 0 stopped the run ({message[0]}).")
        if error is not None:
            raise error

    def gather_blocks(
        self, records: list[SampleRecord], extras: list[tuple[int, dict[str, Any]]]
    ) -> tuple[list[SampleRecord], list[tuple[int, dict[str, Any]]]]:
        """Gather every rank's records and ``(block start, block extras)`` pairs on rank 0.

        Rank 0 gets the concatenation in rank order, not sorted; the other ranks get their own back.
        """
        if not self.active:
            return records, extras
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        with self._collective("gathering the per-sample results on rank 0"):
            dist.gather_object((records, extras), gathered, dst=0)
        if not self.is_main or gathered is None:
            return records, extras

        all_records: list[SampleRecord] = []
        all_extras: list[tuple[int, dict[str, Any]]] = []
        for rank_records, rank_extras in gathered:
            all_records.extend(rank_records)
            all_extras.extend(rank_extras)
        return all_records, all_extras

    def close(self) -> None:
        """Leave the process group."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    @contextmanager
    def _collective(self, doing: str) -> Iterator[None]:
        # gloo and NCCL raise RuntimeError subclasses when a peer closes its connection or a
        # collective call exceeds the group's timeout.
        try:
            yield
        except RuntimeError as error:
            raise DistributedError(
                f"Rank {self.rank} of {self.world_size} failed while {doing}: {_first_line(error)}. "
                f"Another rank probably exited or exceeded the {self.timeout_seconds:g} s timeout; see its error. "
                "Finished blocks are kept, so re-running with --resume continues the run."
            ) from None


def cuda_device_for_rank(device: str, local_rank: int, local_world_size: int = 1) -> str:
    """Select and return the GPU of one process of a multi-process run.

    Plain ``cuda`` maps the process with ``LOCAL_RANK`` r to ``cuda:r``, so that the processes
    on one machine each take their own GPU. The GPU becomes torch's current CUDA device, which
    is where plain ``cuda`` tensors and NCCL's buffers go.

    Raises:
        ValueError: CUDA is unavailable, there are fewer visible GPUs than processes on this
            machine, or ``cuda:N`` would put several processes of this machine on one GPU,
            which NCCL does not support.
    """
    from .devices import resolve_device

    if device == "cuda":
        resolve_device("cuda")  # raises when CUDA is unavailable
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"Expected at most one process per GPU, but the process with LOCAL_RANK={local_rank} found only "
                f"{count} visible CUDA device(s). Start at most {count} processes per machine (--nproc-per-node "
                "or --workers)."
            )
        selected = f"cuda:{local_rank}"
    else:
        if local_world_size > 1:
            raise ValueError(
                f"Expected --device cuda in a run with {local_world_size} processes per machine, but got "
                f"--device {device}, which puts every process on one GPU; NCCL needs one GPU per process. "
                "Pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES."
            )
        selected = str(resolve_device(device))
    torch.cuda.set_device(torch.device(selected))
    return selected


def _environment_int(name: str, default: int | None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"Expected the environment variable {name} in a multi-process run, but it is not set. "
                             "Start the processes with torchrun or robusteval run --workers N.")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"Expected an integer in the environment variable {name}, but got {text!r}.") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
