"""Data-parallel training on torch.distributed: N processes, one process group, gradients
averaged by DDP (``gloo`` on CPU, ``nccl`` on GPUs).

:func:`launch` starts ``nproc`` processes on this machine (a rendezvous on a free loopback
port), runs a training function in each and returns rank 0's result. Inside, the training loop
asks :func:`megacontext.train.gist.data_parallel` for its rank and world size: every process
samples the same global batch and takes its share of the rows, DDP averages the gradients, so
the run follows the single-process run with the same global batch (``tests/train``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from megacontext.errors import InvalidInputError


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``nproc`` processes joined in one process group; rank 0's result
    (it must pickle). ``fn`` must be importable by name (a module-level function)."""
    if nproc < 1:
        raise InvalidInputError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return fn(*args)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="mc-ddp-") as tmp:
        result = Path(tmp) / "rank0.pt"
        torch.multiprocessing.spawn(
            _process, args=(nproc, port, fn, args, str(result)), nprocs=nproc, join=True
        )
        return torch.load(result, weights_only=False)


def _process(
    rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...], out: str
) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        value = fn(*args)
        if rank == 0:
            torch.save(value, out)
    finally:
        dist.destroy_process_group()


__all__ = ["launch"]
