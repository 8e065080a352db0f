"""Branch-aware, verified downloads from the Hugging Face Hub (``mcard branches``, ``mcard fetch``).

* :func:`list_branches` - every branch/tag with commit, size and name-vs-config quant parameters.
* :func:`fetch` - one revision pinned to one commit, streamed with hash verification, resumable,
  into the HF cache (``models--org--name/{blobs,snapshots,refs}``) or a plain folder.

Both read ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when
called (explicit ``endpoint=``, ``token=``, ``cache_dir=``, ``offline=`` arguments win).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. The names are imported on first use (PEP 562), so a module that
# needs only the Hub's name rules (mcard.hub.refs: the registry loader, `mcard plan`) does not load
# the HTTP stack.
_OWNERS = {
    "BranchListing": "branches", "RefReport": "branches", "list_branches": "branches",
    "FetchResult": "download", "FileResult": "download", "fetch": "download",
    "HubEnv": "env", "resolve_env": "env",
    "QuantParams": "refs", "RepoSpec": "refs", "params_from_branch": "refs", "parse_repo_spec": "refs",
    "RetryPolicy": "transfer",
}

if TYPE_CHECKING:
    from .branches import BranchListing, RefReport, list_branches
    from .download import FetchResult, FileResult, fetch
    from .env import HubEnv, resolve_env
    from .refs import QuantParams, RepoSpec, params_from_branch, parse_repo_spec
    from .transfer import RetryPolicy

__all__ = [
    "BranchListing", "FetchResult", "FileResult", "HubEnv", "QuantParams", "RefReport", "RepoSpec", "RetryPolicy",
    "fetch", "list_branches", "params_from_branch", "parse_repo_spec", "resolve_env",
]


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{owner}", __name__), name)
    globals()[name] = value
    return value
