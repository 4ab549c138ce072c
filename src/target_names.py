"""The one rule that says which modules a target name picks (spec §1.1), for methods and reporting.

A target (an entry of ``target_modules`` or ``modules_to_save``) picks the module of that qualified
name and every module whose name ends with ``"." + target``: ``output.dense`` picks
``encoder.layer.3.output.dense`` and ``encoder.layer.3.attention.output.dense``, never ``dense`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable


def matches(name: str, target: str) -> bool:
    """True when module ``name`` is picked by ``target``: the same name or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


def longest_match(name: str, targets: Iterable[str]) -> str | None:
    """The most specific target that picks ``name`` (``attention.output.dense`` over ``output.dense``,
    first in ``targets`` among equally long ones); None when none does."""
    hits = [t for t in targets if matches(name, t)]
    return max(hits, key=len) if hits else None
