"""Branch-aware, verified downloads from the Hugging Face Hub (``mcard branches``, ``mcard fetch``).

* :func:`list_branches` - every branch/tag with commit, size and name-vs-config quant parameters.
* :func:`fetch` - one revision pinned to one commit, streamed with hash verification, resumable,
  into the HF cache (``models--org--name/{blobs,snapshots,refs}``) or a plain folder.

Both read ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when
called (explicit ``endpoint=``, ``token=``, ``cache_dir=``, ``offline=`` arguments win).
"""

from .branches import BranchListing, RefReport, list_branches
from .download import FetchResult, FileResult, fetch
from .env import HubEnv, resolve_env
from .refs import QuantParams, RepoSpec, params_from_branch, parse_repo_spec
from .transfer import RetryPolicy

__all__ = [
    "BranchListing", "FetchResult", "FileResult", "HubEnv", "QuantParams", "RefReport", "RepoSpec", "RetryPolicy",
    "fetch", "list_branches", "params_from_branch", "parse_repo_spec", "resolve_env",
]
