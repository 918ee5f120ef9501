"""`EngineConfig`: the keyword arguments of `LLM(...)`, validated, and the executor config."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ferrum_core.dtype_choice import DtypeChoice
from ferrum_core.engine.sampling_params import validation_message
from ferrum_core.errors import InvalidInputError
from ferrum_core.protocol import (
    ExecutorAttentionConfig,
    ExecutorConfig,
    ExecutorMemoryConfig,
)
from ferrum_core.types import DataType

__all__ = ["EngineConfig"]


class EngineConfig(BaseModel):
    """Engine and executor settings (the `LLM(...)` config keys).

    ``None`` leaves the choice to the backend (``block_size``, ``num_kv_blocks``,
    ``threads``, ``device``) or to the model (``max_model_len``); ``dtype="auto"``
    runs the weights as stored where the backend can (see :mod:`ferrum_core.dtype_choice`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: DtypeChoice = "auto"
    block_size: int | None = Field(default=None, ge=1)
    num_kv_blocks: int | None = Field(default=None, ge=1)
    max_num_seqs: int = Field(default=64, ge=1)
    max_num_batched_tokens: int = Field(default=2048, ge=1)
    max_model_len: int | None = Field(default=None, ge=2)
    enable_prefix_caching: bool = True
    speculative_model: str | None = None
    num_speculative_tokens: int = Field(default=4, ge=1, le=32)
    threads: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    """Ranks the model is split over (executor option ``tensor_parallel_size``)."""
    device: str | None = None
    executor_options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific keys for the factory, as they are (``ExecutorConfig.executor_options``);
    ``enable_prefix_caching`` and ``threads`` above take precedence."""

    @classmethod
    def from_kwargs(cls, config: dict[str, Any]) -> EngineConfig:
        try:
            return cls(**config)
        except ValidationError as err:
            raise InvalidInputError(f"invalid LLM config: {validation_message(err)}") from None

    def executor_config(self, model_path: str | None, dtype: DataType) -> ExecutorConfig:
        """The executor's config in ``dtype`` (``auto`` resolved by the caller); ``device``
        is left to the backend unless set here."""
        options: dict[str, Any] = {**self.executor_options,
                                   "enable_prefix_caching": self.enable_prefix_caching}
        if self.threads is not None:
            options["threads"] = self.threads
        if self.tensor_parallel_size is not None:
            options["tensor_parallel_size"] = self.tensor_parallel_size
        extra: dict[str, Any] = {} if self.device is None else {"device": self.device}
        try:
            return ExecutorConfig(
                model_path=model_path,
                **extra,
                dtype=dtype,
                max_batch_size=self.max_num_seqs,
                max_sequence_length=self.max_model_len,
                attention_config=ExecutorAttentionConfig(block_size=self.block_size),
                memory_config=ExecutorMemoryConfig(
                    num_kv_blocks=self.num_kv_blocks,
                    enable_kv_cache_sharing=self.enable_prefix_caching,
                ),
                executor_options=options,
            )
        except ValidationError as err:
            raise InvalidInputError(f"invalid executor config: {validation_message(err)}") from None
