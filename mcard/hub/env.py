"""Hub settings read from the environment at call time, never at import time.

huggingface_hub freezes ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache
location when it is imported; mcard reads them whenever a command runs, so a
test or a wrapper script can point it at another server without re-importing.
Explicit arguments always win over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.safetext import redact, register_secret

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true", "y"}


@dataclass(frozen=True)
class HubEnv:
    """Where to talk to and where to store; ``token`` is never shown in ``repr``."""

    endpoint: str
    cache_dir: Path
    offline: bool
    token: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        """``text`` redacted (:func:`mcard.core.safetext.redact`): the token and anything shaped like one become ``***``."""
        register_secret(self.token)
        return redact(text)


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))


def default_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub computes it, from the current environment."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return _expand(os.environ[var])
    if os.environ.get("HF_HOME"):
        return _expand(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return _expand(xdg) / "huggingface" / "hub"


def env_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _env_token() -> str | None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    try:  # a token saved by `hf auth login`, read now rather than at import
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken token file must not break public downloads
        return None


def resolve_env(endpoint: str | None = None, token: str | None = None, cache_dir: str | Path | None = None,
                offline: bool | None = None) -> HubEnv:
    """Settings from the arguments, then ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_HUB_OFFLINE``."""
    url = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    cache = _expand(str(cache_dir)) if cache_dir is not None else default_cache_dir()
    token = token if token is not None else _env_token()
    register_secret(token)
    return HubEnv(
        endpoint=url,
        cache_dir=cache,
        offline=env_offline() if offline is None else offline,
        token=token,
    )
