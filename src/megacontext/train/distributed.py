"""Data-parallel training on torch.distributed: N processes, one process group, gradients
averaged by DDP (``gloo`` on CPU, ``nccl`` on GPUs).

:func:`launch` starts ``nproc`` processes on this machine (a rendezvous on a free loopback
port), runs a training function in each and returns rank 0's result. Inside, the training loop
asks :func:`data_parallel` for its rank and world size: every process builds the same global
batch and takes its share (GistNet: rows of a window batch; LensNet and the key head: samples),
DDP averages the gradients, and :func:`global_sum` / :func:`global_mean` make the logged losses
the global batch's. So a run follows the single-process run with the same global batch
(``tests/nets/test_gist_ddp.py``, ``tests/nets/test_lens_ddp.py``).
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


def data_parallel() -> tuple[int, int]:
    """``(rank, world size)`` of the torch.distributed process group (``(0, 1)`` without)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_zero(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` in rank 0 (and in one process), a no-op in the others: one process speaks for a
    run while the others train their share."""
    rank, _ = data_parallel()
    return _silent if rank else log


def _silent(_message: str) -> None:
    pass


def _all_reduce(value: float, dtype: torch.dtype, op: str) -> float:
    """``value`` reduced over the process group with ``torch.distributed.ReduceOp.<op>``."""
    import torch.distributed as dist

    # nccl reduces GPU tensors only; gloo takes CPU ones.
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=dtype, device=device)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return float(tensor.item())


def global_sum(value: float) -> float:
    """``value`` summed over the process group (itself in one process)."""
    _, world = data_parallel()
    return value if world == 1 else _all_reduce(value, torch.float64, "SUM")


def global_min(value: int) -> int:
    """The smallest of ``value`` over the process group (itself in one process)."""
    _, world = data_parallel()
    return value if world == 1 else int(_all_reduce(value, torch.int64, "MIN"))


def global_mean(value: float) -> float:
    """``value`` averaged over the process group (itself in one process)."""
    _, world = data_parallel()
    return value if world == 1 else global_sum(value) / world


__all__ = ["data_parallel", "global_mean", "global_min", "global_sum", "launch", "rank_zero"]
