"""``python -m ferrum_cuda.tp.worker``: one worker rank, started by rank 0 (:mod:`.launch`).

It joins the group, loads its shard and runs every step rank 0 sends until it
sends ``None`` or its stdin (a pipe from rank 0) closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from ferrum_core.plugin import ExecutorConfig
from ferrum_cuda.tp.launch import SPEC_ENV

__all__ = ["main", "serve"]


def _exit_when_parent_goes() -> None:
    sys.stdin.buffer.read()  # returns at EOF: rank 0 stopped us or died
    os._exit(0)


def serve(group: object, llm: object) -> None:
    """Run rank 0's steps on this shard until it sends ``None``."""
    from ferrum_cuda.model import TorchDecoderLLM
    from ferrum_cuda.tp.group import TpGroup

    assert isinstance(group, TpGroup) and isinstance(llm, TorchDecoderLLM)
    while (step := group.broadcast_object(idle=True)) is not None:
        llm.run_shard(step)


def main() -> None:
    threading.Thread(target=_exit_when_parent_goes, name="ferrum-tp-eof", daemon=True).start()
    spec = json.loads(os.environ[SPEC_ENV])
    from ferrum_cuda.factory import TorchExecutorFactory
    from ferrum_cuda.tp.group import TpGroup
    from ferrum_cuda.tp.link import RankLink, build_rank
    from ferrum_cuda.tp.shard import ShardPlan

    factory = TorchExecutorFactory(spec["kind"])
    config = ExecutorConfig.model_validate(spec["config"])
    group = TpGroup(rank=spec["rank"], size=spec["size"], host=spec["host"], port=spec["port"],
                    timeout_s=spec["timeout_s"], nccl=spec["kind"] == "cuda")  # fmt: skip
    loaded = factory.load(config)
    link = RankLink(group, ShardPlan(loaded.known_config, spec["rank"], spec["size"]), None)
    serve(group, build_rank(factory, config, loaded, link))
    os._exit(0)


if __name__ == "__main__":
    main()
