"""What the model needs of its rank's place in a tensor-parallel group (``TpLink``)."""

from __future__ import annotations

from typing import Protocol

from ferrum_core.errors import FerrumError
from ferrum_core.plugin import ModelConfig
from ferrum_cuda.batch import StepBatch
from ferrum_cuda.transformer import TpHook

__all__ = ["TpLink"]


class TpLink(Protocol):
    """This rank's place in a tensor-parallel group (see :mod:`ferrum_cuda.tp`)."""

    size: int
    full_config: ModelConfig  # the whole model (the layers get the shard's config)
    num_parameters: int  # of the whole model
    ops: TpHook

    def share(self, step: StepBatch) -> None:
        """Rank 0: send the step to the workers (they run it on their shards)."""

    def failure(self, exc: BaseException) -> FerrumError:
        """Mark the group unusable; the typed error a failed collective stands for (a dead
        or stalled worker)."""
        ...
