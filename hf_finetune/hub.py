"""Hugging Face Hub access: offline as a normal mode, not an error path; the token and the checks a push
needs before any work; and `env_flag`, the package's one reader of on/off environment variables.

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

from .errors import FinetuneError

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
    if env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE"):
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


def env_flag(name: str, default: bool = False) -> bool:
    """An on/off environment variable: ``1``, ``true``, ``yes`` or ``on`` (any case) is on, any other value
    off; ``default`` when it is not set."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def hub_token() -> str | None:
    """The Hugging Face token `huggingface_hub` would use (``HF_TOKEN`` or `hf auth login`), or None."""
    from huggingface_hub import get_token

    return get_token()


def check_can_push() -> None:
    """Fail before any work when the Hub cannot be reached for a push: offline mode or no token."""
    if env_flag("HF_HUB_OFFLINE"):
        raise FinetuneError(
            "pushing needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; unset it (or use --dry-run)."
        )
    if not hub_token():
        raise FinetuneError(
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a token with write access), "
            "or use --dry-run to see what would be pushed."
        )
