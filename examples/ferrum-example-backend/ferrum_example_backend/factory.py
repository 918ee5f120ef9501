"""The example backend's `ModelExecutorFactory`: load a model, wrap it in `LlmExecutor`."""

from __future__ import annotations

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import (
    BatchModelExecutor,
    DataType,
    ExecutorConfig,
    ExecutorType,
    LlmExecutor,
    LoadedModel,
    executor_types_for,
    load_model,
)
from ferrum_example_backend.model import NumpyLlama
from ferrum_example_backend.plugin import CAPABILITIES, MODEL_TYPES

__all__ = ["MAX_BATCH_SIZE", "ExampleFactory"]

MAX_BATCH_SIZE = 256


class ExampleFactory:
    """Builds pure-numpy executors on the CPU in float32."""

    def validate_config(self, config: ExecutorConfig) -> None:
        if config.dtype != DataType.FP32:
            raise UnsupportedError(
                f"the example backend computes in fp32 only, not {config.dtype.value}"
            )
        if config.device != "cpu":
            raise UnsupportedError(f"the example backend runs on cpu only, not {config.device}")

    def create_executor(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> LlmExecutor:
        """``model``: what ``load_model`` already produced for ``config`` (else loaded here)."""
        self.validate_config(config)
        loaded = model if model is not None else load_model(
            config.model_path, max_model_len=config.max_sequence_length, model_types=MODEL_TYPES
        )
        llm = NumpyLlama.from_weights(
            loaded.known_config,
            loaded.weights,
            max_batch_size=min(config.max_batch_size, MAX_BATCH_SIZE),
        )
        return LlmExecutor(llm, model_id=loaded.path.name, model_type=loaded.model_type,
                           declared=CAPABILITIES)

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor:
        """``LlmExecutor`` is a ``BatchModelExecutor``: one model call per batch."""
        return self.create_executor(config)

    def supported_types(self) -> list[ExecutorType]:
        return executor_types_for(CAPABILITIES)
