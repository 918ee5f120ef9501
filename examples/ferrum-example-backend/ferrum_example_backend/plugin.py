"""Entry point of the example backend (``[project.entry-points.ferrum] example = ...``).

Ferrum imports this module whenever it discovers plugins, e.g. for
``ferrum list-backends``, so it imports nothing heavy: the model code is
imported by the factory loader, only when an executor is created.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ferrum_core.plugin import (
    AttentionType,
    DataType,
    ExecutorCapabilities,
    ProbeResult,
    RegisterBackend,
    hookimpl,
)

if TYPE_CHECKING:
    from ferrum_core.plugin import ModelExecutorFactory

FERRUM_API_VERSION = 1

# The model families NumpyLlama implements (config.json ``model_type``); a model of
# another family is refused before any weights are read.
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# What the backend can do regardless of the model: `ferrum info example` prints it
# without loading anything. An executor's capabilities() never claim more.
CAPABILITIES = ExecutorCapabilities(
    max_batch_size=256,
    max_sequence_length=131072,
    attention_mechanisms=(
        AttentionType.MULTI_HEAD,
        AttentionType.MULTI_QUERY,
        AttentionType.GROUPED_QUERY,
        AttentionType.SLIDING_WINDOW,
    ),
    supports_dynamic_batching=True,
    supports_continuous_batching=True,
    supports_speculative_decoding=True,
    supported_dtypes=(DataType.FP32,),
    supported_devices=("cpu",),
    supports_native_unified_decode=False,
    supports_lora=False,
    supports_prefix_caching=False,
    supported_model_types=MODEL_TYPES,
)


def _probe() -> ProbeResult:
    if importlib.util.find_spec("numpy") is None:
        return ProbeResult(False, "numpy is not installed")
    try:
        numpy_version = version("numpy")
    except PackageNotFoundError:
        numpy_version = "unknown"
    return ProbeResult(True, f"pure numpy {numpy_version} on the CPU")


def _factory() -> ModelExecutorFactory:
    from ferrum_example_backend.factory import ExampleFactory

    return ExampleFactory()


@hookimpl
def ferrum_register_backends(register: RegisterBackend) -> None:
    register(
        "example",
        factory=_factory,
        probe=_probe,
        priority=0,
        capabilities=CAPABILITIES,
        api_version=FERRUM_API_VERSION,
        description="Example third-party backend: a small pure-numpy Llama executor.",
    )
