"""`LLM`: load a model on a backend and generate, chat or stream (vLLM's API)."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ferrum_core.dtype_choice import AUTO, resolve_dtype, stored_dtype, stored_elements
from ferrum_core.engine.config import EngineConfig
from ferrum_core.engine.engine import LLMEngine
from ferrum_core.engine.lora import LoRARequest
from ferrum_core.engine.outputs import RequestOutput, StreamDelta
from ferrum_core.engine.prompts import Messages, PromptInput, batch_of, messages_batch
from ferrum_core.engine.sampling_params import SamplingParams
from ferrum_core.errors import InvalidInputError
from ferrum_core.protocol import ModelExecutor
from ferrum_core.registry import ExecutorRegistry
from ferrum_core.types import DataType

if TYPE_CHECKING:
    from ferrum_core.backends import BackendDescriptor
    from ferrum_core.models import LoadedModel

__all__ = ["LLM"]


class LLM:
    """A model on a backend, ready to generate.

    ``model``: a model directory, a ``.gguf`` file, or ``None`` for the embedded
    default model. ``backend``: a backend name, or ``None`` to select one
    (``FERRUM_BACKEND``, then priority). ``config``: :class:`EngineConfig` keys
    (``dtype``, ``block_size``, ``num_kv_blocks``, ``max_num_seqs``, ...).
    ``dtype`` defaults to ``"auto"``; :attr:`dtype` is what it resolved to on
    :attr:`backend`. A backend that declares ``supported_model_types`` is
    refused a model of another family with a typed error naming both.
    """

    def __init__(self, model: str | Path | None = None, backend: str | None = None,
                 **config: Any) -> None:
        from ferrum_core.backends import create_executor, get_backend
        from ferrum_core.models import IncrementalDetokenizer

        self.config = EngineConfig.from_kwargs(config)
        steps = 3 + (self.config.speculative_model is not None)
        with tqdm(total=steps, desc="Loading", file=sys.stderr, disable=None, leave=False) as bar:
            descriptor = get_backend(backend)
            self.backend = descriptor.name
            loaded = _load_for(model, descriptor, self.config.max_model_len)
            self.tokenizer = loaded.tokenizer
            self.model_path = loaded.path
            self.dtype = _choose_dtype(self.config, loaded, descriptor)
            bar.update()
            bar.set_description(f"Loading model on {self.backend} ({self.dtype.value})")
            target = create_executor(
                self.config.executor_config(str(loaded.path), self.dtype), self.backend
            )
            bar.update()
            draft: ModelExecutor | None = None
            if self.config.speculative_model is not None:
                bar.set_description("Loading draft model")
                draft_model = _load_for(self.config.speculative_model, descriptor,
                                        self.config.max_model_len)
                _check_draft_tokenizer(self.tokenizer.vocab_size,
                                       draft_model.tokenizer.vocab_size)
                draft = create_executor(
                    self.config.executor_config(str(draft_model.path), self.dtype), self.backend
                )
                bar.update()
            self.registry = ExecutorRegistry()
            self.registry.register("target", target)
            if draft is not None:
                self.registry.register("draft", draft)
            tokenizer = self.tokenizer
            eos = tuple(dict.fromkeys([*loaded.generation.eos_token_ids,
                                       *tokenizer.eos_token_ids]))
            self.engine = LLMEngine(
                target,
                detokenizer=lambda: IncrementalDetokenizer(tokenizer),
                eos_token_ids=eos,
                config=self.config,
                draft=draft,
            )
            self.generation_defaults = loaded.generation
            self._streams: dict[str, deque[StreamDelta]] = {}
            bar.update()

    # --- prompts --------------------------------------------------------------------
    def encode_chat(self, messages: Messages, *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template."""
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _add(self, prompt: PromptInput, params: SamplingParams,
             lora: LoRARequest | None) -> str:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            return self.engine.add_request(ids, params, prompt=prompt, lora_request=lora)
        token_ids = prompt.get("prompt_token_ids")
        if not isinstance(token_ids, Sequence) or isinstance(token_ids, str):
            raise InvalidInputError("a token prompt is {'prompt_token_ids': [int, ...]}")
        text = prompt.get("prompt")
        return self.engine.add_request(
            token_ids, params, prompt=text if isinstance(text, str) else None, lora_request=lora
        )

    # --- generation -----------------------------------------------------------------
    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion (continuously batched); outputs in prompt order."""
        items = batch_of(prompts)
        params = _per_prompt(sampling_params, len(items), SamplingParams, "sampling_params")
        loras = _per_prompt(lora_request, len(items), LoRARequest, "lora_request")
        ids: list[str] = []
        try:
            for prompt, p, lora in zip(items, params, loras, strict=True):
                ids.append(self._add(prompt, p or SamplingParams(), lora))
            pending = set(ids)
            with tqdm(total=len(ids), desc="Generating", file=sys.stderr,
                      disable=not use_tqdm, leave=False) as bar:
                while pending and self.engine.has_unfinished_requests():
                    for delta in self._step():
                        if delta.finish_reason is not None and delta.request_id in pending:
                            pending.discard(delta.request_id)
                            bar.update()
        except BaseException:
            for request_id in ids:
                self.engine.abort_request(request_id)
                self.engine.pop_output(request_id)
            raise
        return [self.engine.pop_output(request_id) for request_id in ids]

    def _step(self) -> list[StreamDelta]:
        """One engine step; deltas of open streams are queued for their generators."""
        deltas = self.engine.step()
        for delta in deltas:
            queue = self._streams.get(delta.request_id)
            if queue is not None:
                queue.append(delta)
        return deltas

    def chat(
        self,
        messages: Messages | Sequence[Messages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of messages) or to several."""
        prompts: list[PromptInput] = [
            {"prompt_token_ids": self.encode_chat(conv)} for conv in messages_batch(messages)
        ]
        return self.generate(prompts, sampling_params, lora_request, use_tqdm)

    def stream(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        lora_request: LoRARequest | None = None,
    ) -> Iterator[StreamDelta]:
        """Yield text deltas as tokens arrive; closing the generator aborts the request."""
        request_id = self._add(prompt, params or SamplingParams(), lora_request)
        queue = self._streams[request_id] = deque()
        finished = False
        try:
            while not finished:
                if not queue:
                    self._step()
                    continue
                delta = queue.popleft()
                finished = delta.finish_reason is not None
                if delta.text or delta.token_ids or finished:
                    yield delta
        finally:
            del self._streams[request_id]
            self.engine.abort_request(request_id)  # no-op once finished
            self.engine.pop_output(request_id)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.shutdown()
        for name in self.registry.list_names():
            executor = self.registry.remove(name)
            if executor is not None:
                executor.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_for(model: str | Path | None, descriptor: BackendDescriptor,
              max_model_len: int | None) -> LoadedModel:
    """Load ``model`` if the backend runs its family (weights closed: the backend reopens)."""
    from ferrum_core.models import load_model
    from ferrum_core.models.loader import check_model_type

    caps = descriptor.capabilities
    accepted = caps.supported_model_types if caps is not None else None
    loaded = load_model(model, max_model_len=max_model_len, model_types=None)
    loaded.weights.close()
    check_model_type(loaded.model_type, accepted, f"backend {descriptor.name!r}")
    return loaded


def _choose_dtype(config: EngineConfig, loaded: LoadedModel,
                  descriptor: BackendDescriptor) -> DataType:
    caps = descriptor.capabilities
    supported = caps.supported_dtypes if caps is not None else (DataType.FP32,)
    if config.dtype == AUTO:
        return resolve_dtype(AUTO, stored_dtype(stored_elements(loaded)), supported)
    return DataType(config.dtype)


def _check_draft_tokenizer(target_vocab: int, draft_vocab: int) -> None:
    if draft_vocab != target_vocab:
        raise InvalidInputError(
            f"speculative_model's tokenizer has {draft_vocab} tokens, the model's"
            f" {target_vocab}: draft and target must share a tokenizer"
        )


def _per_prompt(value: Any, n: int, kind: type, name: str) -> list[Any]:
    if value is None or isinstance(value, kind):
        return [value] * n
    if isinstance(value, Sequence) and not isinstance(value, str | Mapping):
        if len(value) != n:
            raise InvalidInputError(f"{name}: {len(value)} given for {n} prompts")
        return list(value)
    raise InvalidInputError(f"{name} must be a {kind.__name__} or a list of them")
