"""The tensor-parallel process group: rendezvous, collectives, timeouts and their errors.

A group of its own (a ``TCPStore`` and a ``ProcessGroupGloo`` / ``ProcessGroupNCCL``),
not torch's process-wide default group, so several executors can live in one process.
Every collective of a step waits at most ``timeout_s``; the rendezvous and the
loading handshake at most ``startup_s`` (a worker imports torch and loads its
shard meanwhile). A peer that died or stalls becomes a :class:`BackendError`
naming what happened instead of a hang.
"""

from __future__ import annotations

import os
import pickle
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import AllgatherOptions, PrefixStore, TCPStore

from ferrum_core.errors import BackendError, BackendUnavailableError
from ferrum_cuda.tp.options import local_rank

__all__ = ["STARTUP_S", "TpGroup", "check_port", "free_port"]

IDLE = timedelta(days=365)  # a worker waits this long for the next step (rank 0 may idle)
STARTUP_S = 600.0  # the least the rendezvous and loading may take (dead workers fail fast)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """Raise :class:`BackendUnavailableError` when ``port`` cannot be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BackendUnavailableError(
                f"tensor-parallel rendezvous port {port} on {host} is already in use "
                f"({exc.strerror}); choose another with executor option tensor_parallel_port"
            ) from None


class TpGroup:
    """One rank's view of the group: ``rank`` of ``size``, rank 0 hosts the store.

    ``nccl``: the model's collectives run on NCCL (CUDA tensors); the step broadcasts and
    the loading handshake (host tensors) on a gloo group beside it."""

    def __init__(
        self, *, rank: int, size: int, host: str, port: int, timeout_s: float, nccl: bool = False
    ) -> None:
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        self.startup_s = max(timeout_s, STARTUP_S)
        timeout = timedelta(seconds=self.startup_s)
        # Under torchrun its agent already serves the store on MASTER_PORT: join it.
        master = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        try:
            store = TCPStore(
                host, port, size, is_master=master, timeout=timeout, wait_for_workers=False
            )
            self.store = PrefixStore("ferrum-tp", store)  # apart from the user's own groups
        except (RuntimeError, OSError) as exc:
            if rank == 0 and "in use" in str(exc).lower():
                raise BackendUnavailableError(
                    f"tensor-parallel rendezvous port {port} on {host} is already in use"
                ) from None
            raise BackendError(
                f"tensor-parallel rendezvous at {host}:{port} failed: {exc}"
            ) from exc
        try:
            gloo = PrefixStore("gloo", self.store)
            self.ctrl: Any = dist.ProcessGroupGloo(gloo, rank, size, timeout)
            self.pg: Any = self.ctrl
            if nccl:  # one GPU per rank: cuda:rank (the executor checked they exist)
                torch.cuda.set_device(local_rank(rank))
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = timeout
                self.pg = dist.ProcessGroupNCCL(PrefixStore("nccl", self.store), rank, size,
                                                options)  # fmt: skip
        except RuntimeError as exc:
            raise BackendError(
                f"tensor-parallel group of {size} did not form within {self.startup_s:g} s: {exc}"
            ) from exc
        self._timeout = timedelta(seconds=timeout_s)

    def all_reduce(self, tensor: torch.Tensor, *, startup: bool = False) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (``startup``: the loading handshake, a host
        tensor, under the startup timeout)."""
        options = dist.AllreduceOptions()
        options.timeout = timedelta(seconds=self.startup_s) if startup else self._timeout
        group = self.ctrl if startup else self.pg
        group.allreduce([tensor], options).wait(options.timeout)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        options = AllgatherOptions()
        options.timeout = self._timeout
        self.pg.allgather([parts], [tensor], options).wait(self._timeout)
        return parts

    def broadcast_object(self, obj: object = None, *, idle: bool = False) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; two broadcasts: length, then bytes).

        ``idle``: a worker waiting for rank 0's next step waits as long as it takes (it
        exits when rank 0 does: its stdin closes, or the connection does)."""
        if self.rank == 0:
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            length = torch.tensor([data.numel()], dtype=torch.long)
        else:
            length = torch.zeros(1, dtype=torch.long)
        self._broadcast(length, IDLE if idle else self._timeout)
        if self.rank != 0:
            data = torch.empty(int(length[0]), dtype=torch.uint8)
        self._broadcast(data, self._timeout)
        return obj if self.rank == 0 else pickle.loads(data.numpy().tobytes())

    def _broadcast(self, tensor: torch.Tensor, timeout: timedelta) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        options.timeout = timeout
        self.ctrl.broadcast([tensor], options).wait(timeout)

    def close(self) -> None:
        self.pg = self.ctrl = None
        self.store = None  # type: ignore[assignment]
