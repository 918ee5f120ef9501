"""The tensor-parallel executor options, and whether this process is under ``torchrun``.

``tensor_parallel_size`` (int, default 1), ``tensor_parallel_timeout_s`` (seconds a
collective or the rendezvous may wait, default 300), ``tensor_parallel_port`` (the
rendezvous port of rank 0, default a free one), ``threads`` (CPU threads per rank,
default 1 under tensor parallelism).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ferrum_core.errors import InvalidInputError

__all__ = ["TpOptions", "local_rank", "torchrun_env"]

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class TpOptions:
    size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    port: int | None = None
    threads: int = 1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TpOptions:
        size = _int(options, "tensor_parallel_size", 1, 1)
        port = options.get("tensor_parallel_port")
        if port is not None:
            port = _int(options, "tensor_parallel_port", 0, 1)
            if port > 65535:
                raise InvalidInputError(f"executor option 'tensor_parallel_port' {port} > 65535")
        timeout = options.get("tensor_parallel_timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidInputError(
                f"executor option 'tensor_parallel_timeout_s' must be a number > 0, got {timeout!r}"
            )
        return cls(size, float(timeout), port, _int(options, "threads", 1, 1))


def _int(options: dict[str, Any], key: str, default: int, least: int) -> int:
    value = options.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidInputError(f"executor option {key!r} must be an int >= {least}, got {value!r}")
    return value


def torchrun_env() -> tuple[int, int, str, int] | None:
    """``(rank, world_size, master_addr, master_port)`` when launched by ``torchrun``."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        return None
    try:
        return (int(env["RANK"]), int(env["WORLD_SIZE"]), env["MASTER_ADDR"],
                int(env.get("MASTER_PORT", "29500")))  # fmt: skip
    except ValueError:
        raise InvalidInputError(
            "RANK, WORLD_SIZE and MASTER_PORT must be integers (torchrun environment)"
        ) from None


def local_rank(rank: int) -> int:
    """The rank's GPU on its node: ``LOCAL_RANK`` under torchrun (several nodes), else ``rank``."""
    if torchrun_env() is None:
        return rank
    return int(os.environ.get("LOCAL_RANK", rank))
