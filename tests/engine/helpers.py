"""Drive an `LLMEngine` to completion in tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ferrum_core.engine import EngineConfig, LLMEngine, LoRARequest, RequestOutput, SamplingParams
from ferrum_core.protocol import ModelExecutor
from tests.engine.toy import EOS, ToyDetokenizer


def toy_engine(executor: ModelExecutor, draft: ModelExecutor | None = None,
               **config: Any) -> LLMEngine:
    return LLMEngine(executor, detokenizer=ToyDetokenizer, eos_token_ids=[EOS],
                     config=EngineConfig(**config), draft=draft)


def run_all(
    engine: LLMEngine,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    loras: Sequence[LoRARequest | None] | None = None,
) -> list[RequestOutput]:
    plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    llist = list(loras) if loras is not None else [None] * len(prompts)
    ids = [engine.add_request(p, sp, lora_request=lo)
           for p, sp, lo in zip(prompts, plist, llist, strict=True)]
    while engine.has_unfinished_requests():
        engine.step()
    return [engine.pop_output(i) for i in ids]


def one_at_a_time(
    engine: LLMEngine, prompts: Sequence[Sequence[int]], params: SamplingParams
) -> list[RequestOutput]:
    return [run_all(engine, [p], params)[0] for p in prompts]


def texts(outputs: Sequence[RequestOutput]) -> list[tuple[str, tuple[int, ...], str | None]]:
    return [(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason)
            for o in outputs]
