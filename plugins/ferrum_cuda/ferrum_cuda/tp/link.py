"""A rank's ``TpLink`` (see :class:`ferrum_cuda.model.TpLink`), and building its shard.

Rank 0 sends every step to the workers before running it itself; a failed
collective marks the group broken (the ranks may be out of step) and becomes a
:class:`BackendError` naming the dead worker where there is one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from ferrum_core.errors import BackendError, FerrumError
from ferrum_core.plugin import ExecutorConfig, LoadedModel
from ferrum_cuda.batch import StepBatch
from ferrum_cuda.tp.group import TpGroup
from ferrum_cuda.tp.launch import WorkerSet
from ferrum_cuda.tp.ops import TpOps
from ferrum_cuda.tp.shard import ShardPlan, parameter_count

if TYPE_CHECKING:
    from ferrum_cuda.factory import TorchExecutorFactory
    from ferrum_cuda.model import TorchDecoderLLM
    from ferrum_cuda.transformer import TpHook

__all__ = ["RankLink", "build_rank"]

T = TypeVar("T")
DEATH_GRACE_S = 2.0  # how long a failed collective waits to see a worker's exit


class RankLink:
    def __init__(self, group: TpGroup, plan: ShardPlan, workers: WorkerSet | None) -> None:
        self.group, self.plan, self.workers = group, plan, workers
        self.size = plan.size
        self.full_config = plan.full
        self.num_parameters = parameter_count(plan.full)
        self.ops: TpHook = TpOps(group, plan.vocab, plan.full.vocab_size)
        self.broken: FerrumError | None = None
        self.closed = False

    def wait(self, body: Callable[[], T], what: str) -> T:
        return body() if self.workers is None else self.workers.while_alive(body, what)

    def share(self, step: StepBatch) -> None:
        if self.broken is not None:
            raise BackendError(f"the tensor-parallel group is unusable: {self.broken}")
        if self.workers is not None:
            try:
                self.workers.check()
            except BackendError as exc:
                self.broken = exc
                raise
        self.group.broadcast_object(step)

    def failure(self, exc: BaseException) -> FerrumError:
        if self.broken is not None:
            return self.broken
        deadline = time.monotonic() + DEATH_GRACE_S
        dead: list[str] = []
        while self.workers is not None and time.monotonic() < deadline:
            dead = self.workers.dead()
            if dead:
                break
            time.sleep(0.05)
        if dead:
            self.broken = BackendError("tensor-parallel worker died: " + "; ".join(dead))
        else:
            self.broken = BackendError(
                f"tensor-parallel collective failed (timeout {self.group.timeout_s:g} s): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            )
        return self.broken

    def close(self) -> None:
        """Stop the workers (a ``None`` step ends their loop; their pipes close too)."""
        if self.closed:
            return
        self.closed = True
        if self.broken is None and (self.workers is None or not self.workers.dead()):
            with contextlib.suppress(RuntimeError):
                self.group.broadcast_object(None)
        if self.workers is not None:  # a stalled worker is not waited for
            self.workers.stop(grace=0.5 if self.broken is not None else 5.0)
        self.group.close()


def build_rank(
    factory: TorchExecutorFactory, config: ExecutorConfig, loaded: LoadedModel, link: RankLink
) -> TorchDecoderLLM:
    """Build this rank's shard; every rank learns whether all of them succeeded."""
    error: BaseException | None = None
    llm = None
    try:
        llm = factory.build_llm(config, loaded, tp=link, plan=link.plan)
    except Exception as exc:  # the others must hear of it before it is raised
        error = exc
    status = torch.tensor([0 if error is None else 1], dtype=torch.long)
    link.wait(lambda: link.group.all_reduce(status, startup=True), "loading")
    if error is not None:
        raise error
    if int(status[0]):
        detail = "; ".join(link.workers.dead()) if link.workers is not None else ""
        raise BackendError(f"a tensor-parallel worker failed to load its shard {detail}".strip())
    assert llm is not None
    return llm
