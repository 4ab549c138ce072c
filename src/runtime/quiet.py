"""Library warnings that a user of ``src.train`` cannot act on, silenced in this one place.

Each entry says why it is noise here. Anything not listed still reaches the console.
"""

from __future__ import annotations

import warnings

KNOWN_NOISE = [
    # peft's PeftModel reads ``model.is_gradient_checkpointing`` when it wraps a model; transformers 5
    # deprecated the name. The read is peft's, not ours or the user's, and changes nothing.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


def silence_known_noise() -> None:
    for category, message in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
