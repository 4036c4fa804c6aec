"""Hugging Face Hub access: offline as a normal mode, not an error path.

When ``HF_HUB_OFFLINE`` is not set, one quick TCP probe of the Hub endpoint decides: if it cannot be
reached, the process switches to offline mode so models and tokenizers resolve from the local cache
at once, instead of each lookup retrying the network for minutes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

_PROBED: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_hub_mode() -> bool:
    """Return True when working offline; switch to offline mode when the Hub is unreachable."""
    global _PROBED
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    if os.environ.get("HF_HUB_OFFLINE") is not None:  # explicitly set to a false value: never probe
        return False
    if _PROBED is None:
        _PROBED = not hub_reachable()
        if _PROBED:
            logger.warning(
                "The Hugging Face Hub is unreachable: working offline from the local cache "
                "(set HF_HUB_OFFLINE=0 to force online mode)."
            )
            set_offline()
    return _PROBED


def set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Libraries imported already read the variable at import time; update their copies too.
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
