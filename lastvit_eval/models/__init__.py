"""Checkpoint loading: detect the format, map keys with pure functions, build from a well-kept library."""

from .base import ArchSpec, Backbone, KeyReport, LoadedModel, LoadError, LoadOptions
from .registry import load_model

__all__ = ["ArchSpec", "Backbone", "KeyReport", "LoadError", "LoadOptions", "LoadedModel", "load_model"]
