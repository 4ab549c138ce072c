"""The adapter methods, one module or package each, registered by name (``method=<name>``).

Importing this package registers every method; ``get_method`` is the only way the loop finds one.
"""

from src.methods import adalora, increlora, lora, triadapt  # noqa: F401  (importing registers them)
from src.methods.base import METHODS, AdapterMethod
from src.methods.growing.callback import RankGrowthCallback

__all__ = ["METHODS", "AdapterMethod", "RankGrowthCallback", "get_method"]


def get_method(name: str) -> AdapterMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]()
