"""Ferrum backends `cuda` and `torch` (PyTorch)."""
