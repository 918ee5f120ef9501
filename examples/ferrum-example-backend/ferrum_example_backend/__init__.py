"""Ferrum example third-party backend: a small pure-numpy Llama-family executor.

Importing the package is cheap on purpose: the entry-point module
(:mod:`ferrum_example_backend.plugin`) is imported whenever Ferrum discovers
plugins, so the model code is only imported when an executor is created.
"""

__version__ = "0.1.0"
