"""Hugging Face Hub reachability: go offline at once instead of hanging 23-46 s per call."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_probe_result: bool | None = None


class HubUnavailableError(RuntimeError):
    """A hub name was requested while the Hub cannot be reached."""


def _reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    ok = []

    def probe():  # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_VARS)


def ensure_offline_mode_if_unreachable() -> bool:
    """Set the HF offline variables when the Hub does not answer; returns True when offline."""
    global _probe_result
    if is_offline():
        return True
    if _probe_result is None:
        _probe_result = _reachable()
        if not _probe_result:
            log.warning("Hugging Face Hub unreachable: running offline (%s=1)", ", ".join(OFFLINE_VARS))
            for var in OFFLINE_VARS:
                os.environ[var] = "1"
            try:  # huggingface_hub reads the variable at import time
                import huggingface_hub.constants as hc

                hc.HF_HUB_OFFLINE = True
            except (ImportError, AttributeError):
                pass
    return not _probe_result


def resolve_local(name_or_path: str) -> str:
    """``pkg:<package>/<subdir>`` → the folder inside an installed package; anything else unchanged."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    package, _, subdir = name_or_path[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HubUnavailableError(
            f"package {package!r} is not installed; run `make setup` (it installs it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise HubUnavailableError(f"{path} does not exist inside the installed package {package!r}")
    return str(path)


def is_hub_name(name_or_path: str) -> bool:
    return not name_or_path.startswith("pkg:") and not Path(name_or_path).exists()


def hub_error(kind: str, name: str, override: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot fetch {kind} {name!r}: the Hugging Face Hub is unreachable (offline) and it is not in the "
        f"local cache; supply local files with `{override}`"
    )
