"""`LLM`: load a model on a backend and generate, chat or stream (vLLM's API)."""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ferrum_core.engine.config import EngineConfig
from ferrum_core.engine.engine import LLMEngine
from ferrum_core.engine.lora import LoRARequest
from ferrum_core.engine.model_loading import check_draft_tokenizer, choose_dtype, load_for
from ferrum_core.engine.outputs import RequestOutput, StreamDelta
from ferrum_core.engine.prompt_ids import encode_prompt
from ferrum_core.engine.prompts import (
    Messages,
    PromptInput,
    batch_of,
    check_conversation,
    messages_batch,
)
from ferrum_core.engine.sampling_params import SamplingParams
from ferrum_core.engine.sinks import DeltaSink
from ferrum_core.errors import InvalidInputError
from ferrum_core.protocol import ModelExecutor
from ferrum_core.registry import ExecutorRegistry

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

    Threads: one ``LLM`` may be shared. :meth:`generate`, :meth:`chat`,
    :meth:`stream` and :meth:`abort_request` take an internal lock around every
    engine step (not around a whole call), so requests from several threads are
    batched together and never corrupt each other; each thread gets exactly what
    a serial run would give it (greedy outputs are equal). A ``stream()``
    generator holds no lock between deltas: it may be created, iterated and closed
    from different threads (one at a time, as any generator). When an engine step
    fails, every request in flight at that moment is aborted and each caller
    owning one of them gets the error. Do not drive :attr:`engine` directly
    while other threads use this object.
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
            loaded = load_for(model, descriptor, self.config.max_model_len)
            self.tokenizer = loaded.tokenizer
            self.model_path = loaded.path
            self.dtype = choose_dtype(self.config, loaded, descriptor)
            bar.update()
            bar.set_description(f"Loading model on {self.backend} ({self.dtype.value})")
            target = create_executor(
                self.config.executor_config(str(loaded.path), self.dtype), self.backend,
                model=loaded,
            )
            bar.update()
            draft: ModelExecutor | None = None
            if self.config.speculative_model is not None:
                bar.set_description("Loading draft model")
                draft_model = load_for(self.config.speculative_model, descriptor,
                                        self.config.max_model_len)
                check_draft_tokenizer(self.tokenizer.vocab_size,
                                       draft_model.tokenizer.vocab_size)
                draft = create_executor(
                    self.config.executor_config(str(draft_model.path), self.dtype),
                    self.backend, model=draft_model,
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
            self._sinks: dict[str, DeltaSink] = {}
            self._failed: dict[str, BaseException] = {}
            self._lock = threading.RLock()
            bar.update()

    # --- prompts --------------------------------------------------------------------
    def encode_chat(self, messages: Messages, *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template."""
        conversation = check_conversation(messages)
        text = self.tokenizer.apply_chat_template(
            list(conversation), add_generation_prompt=add_generation_prompt
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _add(self, prompt: PromptInput, params: SamplingParams, lora: LoRARequest | None,
             *, streamed: bool = False) -> str:
        """Tokenise (no lock needed), then add the request (and its stream queue, in the
        same locked section, so that no delta is produced before the queue exists)."""
        ids, text = encode_prompt(self.tokenizer, prompt)
        with self._lock:
            request_id = self.engine.add_request(ids, params, prompt=text, lora_request=lora)
            if streamed:
                self._streams[request_id] = deque()
            return request_id

    def _add_with_sink(self, ids: tuple[int, ...], text: str | None, params: SamplingParams,
                       lora: LoRARequest | None, request_id: str | None,
                       sink: DeltaSink) -> str:
        """Add an encoded request whose deltas and failure go to ``sink`` (lock held
        or taken here); errors adding it are raised, not sent to the sink."""
        with self._lock:
            request_id = self.engine.add_request(ids, params, prompt=text, lora_request=lora,
                                                 request_id=request_id)
            self._sinks[request_id] = sink
            return request_id

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
            done = 0
            with tqdm(total=len(ids), desc="Generating", file=sys.stderr,
                      disable=not use_tqdm, leave=False) as bar:
                while done < len(ids):
                    with self._lock:
                        self._raise_failure(ids)
                        finished = sum(self.engine.is_finished(r) for r in ids)
                        if finished < len(ids):
                            self._step()
                    bar.update(finished - done)
                    done = finished
            with self._lock:
                return [self.engine.pop_output(request_id) for request_id in ids]
        except BaseException:
            with self._lock:
                for request_id in ids:
                    self._forget(request_id)
            raise

    def _step(self, stepped: Callable[[], None] | None = None) -> None:
        """One engine step (lock held); deltas of open streams are queued for their
        generators. A failed step aborts every request in flight, each owner raises.
        ``stepped`` runs after the step, before any delta or failure is handed out."""
        in_flight = self.engine.unfinished_request_ids()
        try:
            deltas = self.engine.step()
        except Exception as exc:
            if stepped is not None:
                stepped()
            for request_id in in_flight:
                sink = self._sinks.get(request_id)
                if sink is not None:
                    sink.fail(exc)
                else:
                    self._failed[request_id] = exc
                self.engine.abort_request(request_id)
            return
        if stepped is not None:
            stepped()
        for delta in deltas:
            queue = self._streams.get(delta.request_id)
            if queue is not None:
                queue.append(delta)
                continue
            target = self._sinks.get(delta.request_id)
            if target is not None:
                target.deliver(delta)

    def _raise_failure(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            error = self._failed.pop(request_id, None)
            if error is not None:
                raise error

    def _forget(self, request_id: str) -> None:
        """Abort and drop a request (lock held), whatever state it is in."""
        self._failed.pop(request_id, None)
        self._streams.pop(request_id, None)
        self._sinks.pop(request_id, None)
        self.engine.abort_request(request_id)  # no-op once finished
        if self.engine.has_request(request_id):
            self.engine.pop_output(request_id)

    def abort_request(self, request_id: str) -> None:
        """Abort a request (e.g. a stream's ``delta.request_id``) from any thread; its
        output ends with ``finish_reason == "abort"``."""
        with self._lock:
            self.engine.abort_request(request_id)

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
        """Yield text deltas as tokens arrive; closing the generator aborts the request.

        With ``params.n > 1`` the deltas of the ``n`` completions interleave, each
        with its ``index``; the stream ends when all ``n`` have finished."""
        params = params or SamplingParams()
        request_id = self._add(prompt, params, lora_request, streamed=True)
        queue = self._streams[request_id]
        unfinished = params.n
        try:
            while unfinished:
                with self._lock:
                    self._raise_failure([request_id])
                    if not queue:
                        self._step()
                        continue
                    delta = queue.popleft()
                finished = delta.finish_reason is not None
                unfinished -= finished
                if delta.text or delta.token_ids or finished:
                    yield delta  # no lock is held while the caller has the delta
        finally:
            with self._lock:
                self._forget(request_id)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def close(self) -> None:
        with self._lock:
            self.engine.shutdown()
        for name in self.registry.list_names():
            executor = self.registry.remove(name)
            if executor is not None:
                executor.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _per_prompt(value: Any, n: int, kind: type, name: str) -> list[Any]:
    if value is None or isinstance(value, kind):
        return [value] * n
    if isinstance(value, Sequence) and not isinstance(value, str | Mapping):
        if len(value) != n:
            raise InvalidInputError(f"{name}: {len(value)} given for {n} prompts")
        return list(value)
    raise InvalidInputError(f"{name} must be a {kind.__name__} or a list of them")
