"""The demo's publish step: package its tiny variants, publish them to the local Hub, fetch them back.

The quantizer outputs the demo's builders wrote (``staging/``) are published
with ``sync --publish`` (package -> validate -> smoke -> publish -> verify by
fetching back) to ``<repo>-published`` repos on the loopback Hub's write API,
so the published repos sit next to the hand-built ones the first step synced
(their entries are written to ``<out>/registry-published``).
Then each is published a second time, unchanged, to show that a rerun sends
nothing and makes no commit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

# A test token for the loopback Hub only (never a real one); tokens are never printed.
DEMO_TOKEN = "mcard-demo-write-token"
# registry entry -> the folder under staging/ whose layout is DIR/<branch>/ or DIR/<file>
_FROM = {"tiny-llama-gptq.toml": "gptq", "tiny-llama-awq.toml": "awq", "tiny-llama-gguf.toml": "gguf",
         "tiny-llama-qlora.toml": "lora"}


def _from_dir(staging: Path, name: str, links: Path) -> Path:
    """``--from`` for one entry: the GPTQ and GGUF folders already are DIR/<branch>/ and DIR/<file>."""
    if name in ("gptq", "gguf"):
        return staging / name
    folder = links / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main").symlink_to((staging / name).resolve(), target_is_directory=True)
    return folder


def publish_step(workdir: Path, out: Path, endpoint: str, smoke: bool, progress: Any = None) -> tuple[list[Any], list[Any]]:
    """``sync --publish`` of every demo entry, then an unchanged republish; returns (sync results, republish results)."""
    from ..core.arch import tiny_config
    from ..registry.entry import load_entry
    from .demo import _write_registry
    from .publish import publish
    from .sync import SyncOptions, sync
    from .sync_report import slug

    registry = out / "registry-published"
    registry.mkdir(parents=True, exist_ok=True)
    _write_registry(registry, tiny_config(), broken=False)
    results, again = [], []
    with tempfile.TemporaryDirectory(prefix="mcard-demo-from-") as links:
        for entry_name, fmt in _FROM.items():
            entry = registry / entry_name
            repo = load_entry(entry).model.repo + "-published"
            package_dir = out / "packages" / slug(repo)
            options = SyncOptions(publish=True, from_dir=_from_dir(workdir / "staging", fmt, Path(links)),
                                  package_dir=package_dir, repo=repo, create=True, smoke=smoke, device="cpu",
                                  report_dir=out / "reports" / slug(repo), endpoint=endpoint,
                                  token=DEMO_TOKEN, cache_dir=out / "hf-cache")
            results += sync(entry, options, progress=progress)
            if all(r.ok for r in results[-1:]):
                again.append(publish(package_dir, repo=repo, endpoint=endpoint, token=DEMO_TOKEN))
    return results, again
