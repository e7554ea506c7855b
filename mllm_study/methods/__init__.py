"""PEFT method registry: one file per method, each registered with :func:`register_method`.

Usage: ``model = apply_method(model, "lora", {"r": 16}, placement="both", connector="tuned")``
"""

from .registry import METHODS, Method, apply_method, get_method, list_methods, register_method
from . import lora as _lora  # noqa: F401  (registers itself)
from . import none as _none  # noqa: F401

__all__ = ["METHODS", "Method", "apply_method", "get_method", "list_methods", "register_method"]
