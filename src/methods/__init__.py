"""Adapter methods, registered by name (the Hydra option ``method=<name>``)."""

from src.methods import adalora, increlora, lora, triadapt  # noqa: F401  (registration side effects)
from src.methods.base import METHODS, AdapterMethod, get_method

__all__ = ["METHODS", "AdapterMethod", "get_method"]
