"""Known library noise is silenced in one place (src/runtime/quiet.py), and nothing else is."""

from __future__ import annotations

import warnings

from src.runtime.quiet import silence_known_noise


def test_the_is_gradient_checkpointing_deprecation_is_silenced_and_other_warnings_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something the user should see", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user should see"]
