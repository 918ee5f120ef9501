"""Shared fixtures for the core's tests."""

pytest_plugins = ["tests.plugin_factory"]
