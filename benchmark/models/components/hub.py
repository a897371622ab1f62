"""Whether the model hub can be reached, decided once per process.

Without network the hub client retries each request with back-off for about 25 s before it falls
back to its local cache (or fails). The loaders ask :func:`hub_load_kwargs` first: when the hub's
host does not accept a connection (or ``HF_HUB_OFFLINE`` is set), a hub name is loaded from the
local hub cache only, at once, and a name that is not cached fails in one line naming the host.
"""

from __future__ import annotations

import os
import urllib.parse
from functools import lru_cache


def offline_by_env() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_host() -> str:
    """The hub's host name (``HF_ENDPOINT`` when set, else huggingface.co)."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return urllib.parse.urlparse(endpoint).hostname or "huggingface.co"


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether this process may contact the hub: not offline by environment, and its host answers."""
    return not offline_by_env() and reachable(hub_host())


def hub_load_kwargs() -> dict[str, bool]:
    """``from_pretrained`` arguments for a hub name: the local cache only when the hub is out of reach."""
    return {} if hub_reachable() else {"local_files_only": True}


def model_load_kwargs(kwargs: dict[str, bool]) -> dict[str, object]:
    """``kwargs`` for an ``AutoModel*.from_pretrained`` call: with ``local_files_only``, the check for
    an adapter config is kept local too (transformers does not pass the flag on to that check)."""
    if kwargs.get("local_files_only"):
        return {**kwargs, "adapter_kwargs": {"local_files_only": True}}
    return dict(kwargs)


def load_failure(error: BaseException, hub_name: bool) -> str:
    """Why a ``from_pretrained`` call failed, in one line: the error's first line and, for a hub
    name while the hub was out of reach, that no copy was in the local hub cache."""
    text = str(error).strip()
    why = text.splitlines()[0] if text else type(error).__name__
    if not hub_name or hub_reachable():
        return why
    reach = "HF_HUB_OFFLINE is set" if offline_by_env() else f"{hub_host()} unreachable"
    return f"{why}; {reach} and no copy in the local hub cache"
