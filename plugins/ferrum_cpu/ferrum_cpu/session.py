"""ONNX Runtime session options and execution providers for the `cpu` backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferrum_core.errors import BackendUnavailableError, InvalidInputError

__all__ = ["cuda_available", "make_session", "providers_for"]


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def providers_for(device: str) -> list[Any]:
    """The execution providers for ``device`` (``cpu`` or ``cuda:N``), or a typed error."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = device.partition(":")[2]
    if not device.startswith("cuda:") or not index.isdigit():
        raise InvalidInputError(f"the cpu backend runs on 'cpu' or 'cuda:N', not {device!r}")
    if not cuda_available():
        import onnxruntime as ort

        raise BackendUnavailableError(
            f"device {device!r} needs ONNX Runtime's CUDAExecutionProvider; the installed "
            f"onnxruntime {ort.__version__} offers {', '.join(ort.get_available_providers())} "
            "(install onnxruntime-gpu instead of onnxruntime)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]


def make_session(model: Path, *, device: str, threads: int | None) -> Any:
    """An InferenceSession over a cached model file: all graph optimisations, a
    reused CPU arena, sequential execution and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False  # shapes change from call to call
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=options,
                                providers=providers_for(device))
