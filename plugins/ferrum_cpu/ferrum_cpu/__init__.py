"""Ferrum backend `cpu`: ONNX Runtime with fused contrib operators.

Importing the package is cheap: the entry point (:mod:`ferrum_cpu.plugin`)
imports neither onnx nor onnxruntime; the factory does when it builds an executor.
"""

__version__ = "0.1.0"
