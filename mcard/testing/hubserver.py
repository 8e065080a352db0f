"""A real Hugging Face Hub API on loopback: local git repos served by olah.

Two pieces, usable from tests, benchmarks and the demo command:

* :func:`build_git_repo` writes an ordinary git repository laid out the way
  olah's offline mirror expects it (``<mirrors>/models/<org>/<name>``), one
  branch per variant. Big or binary files are committed as Git LFS pointers
  with their bytes under ``.git/lfs/objects/aa/bb/<sha256>``, exactly as
  ``git lfs`` would leave them (the ``git-lfs`` binary is not needed).
  Commits are made with ``git fast-import`` in one subprocess, so building a
  repo with many branches takes milliseconds plus the time to write the bytes.
  Dates and identities are fixed: the same input gives the same commit ids.
* :class:`OlahServer` writes a ``configs.toml`` (offline mode, the mirrors
  folder, a free loopback port), starts ``python -m olah.server`` and waits
  until it answers HTTP. Use it as a context manager; ``.endpoint`` is the
  value for ``HF_ENDPOINT``.

Example::

    with tempfile.TemporaryDirectory() as tmp:
        mirrors = Path(tmp, "mirrors")
        build_git_repo(mirrors, "org/model", {"main": {"config.json": b"{}"}})
        with OlahServer(mirrors) as hub:
            HfApi(endpoint=hub.endpoint).list_repo_refs("org/model")

Known olah limits (0.5.x, offline mirror mode): Range is ignored (always 200
with the whole body, no Content-Length on GET); unknown repos and revisions
answer 401 ``RepoNotFound``; a missing file answers 500; a non-LFS file of
121-149 bytes that is not UTF-8 crashes its pointer sniffing, so the builder
stores such files as LFS objects.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

#: Patterns committed as LFS whatever their size (a subset of the Hub's default .gitattributes).
LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors", "*.bin", "*.gguf", "*.ggml", "*.pt", "*.pth", "*.ckpt", "*.pkl",
    "*.h5", "*.onnx", "*.msgpack", "*.model", "*.npy", "*.npz", "*.zip", "*.tar", "*.gz",
)
#: Files at least this big are committed as LFS (the Hub's limit for plain git files is 10 MB).
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024

_IDENT = "mcard test <mcard@example.invalid>"
_EPOCH = 1_700_000_000
_GIT = ("git", "-c", "user.name=mcard test", "-c", "user.email=mcard@example.invalid",
        "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false")


@dataclass(frozen=True)
class RepoFileInfo:
    """What the Hub will report for one committed file."""

    path: str
    size: int
    lfs: bool
    sha256: str
    blob_id: str  # git blob id of what is committed: the pointer for LFS files


@dataclass
class BuiltRepo:
    """A repository written by :func:`build_git_repo`."""

    repo_id: str
    path: Path
    commits: dict[str, str] = field(default_factory=dict)  # branch -> commit id
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit id
    files: dict[str, dict[str, RepoFileInfo]] = field(default_factory=dict)  # branch -> path -> info


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob: sha1 of ``b"blob <size>\\0" + data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The text of a Git LFS pointer file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git(repo: Path | None, *args: str, stdin: bytes | None = None) -> str:
    cmd = [*_GIT, *(["-C", str(repo)] if repo is not None else []), *args]
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-len(args) - 2:])} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


def _needs_lfs(path: str, size: int, head: bytes, threshold: int, patterns: tuple[str, ...]) -> bool:
    name = path.rsplit("/", 1)[-1]
    if size >= threshold or any(fnmatch.fnmatch(name, p) for p in patterns):
        return True
    if 121 <= size <= 149:  # olah decodes files of this size as UTF-8 to sniff LFS pointers
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def _store_lfs(repo: Path, content: bytes | Path) -> tuple[str, int]:
    """Write an LFS object (bytes or a file to copy) and return (sha256, size)."""
    if isinstance(content, bytes):
        digest, size = hashlib.sha256(content).hexdigest(), len(content)
    else:
        h = hashlib.sha256()
        with open(content, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest, size = h.hexdigest(), content.stat().st_size
    obj = repo / ".git" / "lfs" / "objects" / digest[:2] / digest[2:4] / digest
    if not obj.exists():
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_suffix(".tmp")
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:  # a copy, not a hard link: later edits of either file must not reach the other
            shutil.copyfile(content, tmp)
        os.replace(tmp, obj)
    return digest, size


def _quote_path(path: str) -> bytes:
    if "\n" in path or path.startswith('"') or "\\" in path:
        escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'.encode()
    return path.encode()


def _head(content: bytes | Path) -> tuple[int, bytes]:
    if isinstance(content, bytes):
        return len(content), content[:256]
    with open(content, "rb") as f:
        return content.stat().st_size, f.read(256)


def _commit_stream(repo: Path, ref: str, files: dict[str, bytes | Path], message: str, when: int,
                   parent: bool, threshold: int, patterns: tuple[str, ...],
                   gitattributes: bool, mark: int = 1) -> tuple[bytes, dict[str, RepoFileInfo]]:
    """The fast-import commands of one commit that replaces the whole tree of ``ref``."""
    out: list[bytes] = []
    infos: dict[str, RepoFileInfo] = {}
    lfs_paths: list[str] = []
    for path, content in files.items():
        size, head = _head(content)
        if _needs_lfs(path, size, head, threshold, patterns):
            sha, size = _store_lfs(repo, content)
            blob = lfs_pointer(sha, size)
            infos[path] = RepoFileInfo(path, size, True, sha, git_blob_id(blob))
            lfs_paths.append(path)
        else:
            blob = content if isinstance(content, bytes) else content.read_bytes()
            infos[path] = RepoFileInfo(path, size, False, hashlib.sha256(blob).hexdigest(), git_blob_id(blob))
        out.append(b"M 100644 inline " + _quote_path(path) + b"\ndata %d\n" % len(blob) + blob + b"\n")
    if gitattributes and lfs_paths and ".gitattributes" not in files:
        lines = [f"{p} filter=lfs diff=lfs merge=lfs -text" for p in patterns]
        lines += [f"{p} filter=lfs diff=lfs merge=lfs -text" for p in lfs_paths
                  if not any(fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat) for pat in patterns)]
        blob = ("\n".join(lines) + "\n").encode()
        infos[".gitattributes"] = RepoFileInfo(".gitattributes", len(blob), False,
                                               hashlib.sha256(blob).hexdigest(), git_blob_id(blob))
        out.append(b"M 100644 inline .gitattributes\ndata %d\n" % len(blob) + blob + b"\n")
    msg = message.encode()
    header = (f"commit {ref}\nmark :{mark}\ncommitter {_IDENT} {when} +0000\n").encode() + b"data %d\n" % len(msg) + msg + b"\n"
    if parent:
        header += f"from {ref}^0\n".encode()
    return header + b"deleteall\n" + b"".join(out) + b"\n", infos


def commit_files(repo_dir: str | Path, branch: str, files: dict[str, bytes | Path], *,
                 message: str | None = None, lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
                 lfs_patterns: tuple[str, ...] = LFS_PATTERNS, gitattributes: bool = True) -> tuple[str, dict[str, RepoFileInfo]]:
    """Commit ``files`` as the whole tree of ``branch`` (created or advanced); return (commit, infos)."""
    repo = Path(repo_dir)
    ref = f"refs/heads/{branch}"
    exists = bool(_git(repo, "for-each-ref", ref).strip())
    count = int(_git(repo, "rev-list", "--all", "--count").strip() or 0) if exists else 0
    stream, infos = _commit_stream(repo, ref, files, message or f"{branch}: update files", _EPOCH + count,
                                   exists, lfs_threshold, lfs_patterns, gitattributes)
    _git(repo, "fast-import", "--quiet", "--done", stdin=stream + b"done\n")
    return _git(repo, "rev-parse", ref).strip(), infos


def build_git_repo(mirrors_dir: str | Path, repo_id: str, branches: dict[str, dict[str, bytes | Path]], *,
                   lfs_threshold: int = DEFAULT_LFS_THRESHOLD, lfs_patterns: tuple[str, ...] = LFS_PATTERNS,
                   tags: dict[str, str] | None = None, gitattributes: bool = True) -> BuiltRepo:
    """Write ``<mirrors_dir>/models/<repo_id>`` as a git repo with one commit per branch.

    ``branches`` maps a branch name to ``{path: content}``; content is bytes or
    the path of a file to copy (large files need not be held in memory). A
    file is stored through LFS when it matches ``lfs_patterns`` or is at
    least ``lfs_threshold`` bytes. ``tags`` maps a tag name to a branch name.
    With ``gitattributes`` a Hub-style ``.gitattributes`` is added to branches
    holding LFS files (unless given). HEAD points at ``main`` when present.
    """
    if not branches:
        raise ValueError("build_git_repo needs at least one branch")
    repo = Path(mirrors_dir) / "models" / repo_id
    if repo.exists() and any(repo.iterdir()):
        raise FileExistsError(f"{repo} already exists and is not empty")
    repo.mkdir(parents=True, exist_ok=True)
    _git(None, "init", "--quiet", str(repo))
    built = BuiltRepo(repo_id=repo_id, path=repo)
    stream = b""
    for i, (branch, files) in enumerate(branches.items()):
        part, built.files[branch] = _commit_stream(repo, f"refs/heads/{branch}", files, f"{branch}: add files",
                                                   _EPOCH + i, False, lfs_threshold, lfs_patterns, gitattributes,
                                                   mark=i + 1)
        stream += part
    marks = {branch: i + 1 for i, branch in enumerate(branches)}
    for tag, branch in (tags or {}).items():
        stream += f"reset refs/tags/{tag}\nfrom :{marks[branch]}\n\n".encode()
    _git(repo, "fast-import", "--quiet", "--done", stdin=stream + b"done\n")
    head = "main" if "main" in branches else next(iter(branches))
    _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{head}")
    for line in _git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags").splitlines():
        ref, sha = line.split(" ", 1)
        if ref.startswith("refs/heads/"):
            built.commits[ref[len("refs/heads/"):]] = sha
        else:
            built.tags[ref[len("refs/tags/"):]] = sha
    return built


def safetensors_bytes(n_bytes: int, seed: int = 0, name: str = "weight") -> bytes:
    """A valid safetensors file holding one uint8 tensor of ``n_bytes`` deterministic pseudo-random bytes."""
    header = json.dumps({"__metadata__": {"format": "pt"},
                         name: {"dtype": "U8", "shape": [n_bytes], "data_offsets": [0, n_bytes]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + random.Random(seed).randbytes(n_bytes)


def _gptq_files(bits: int, group: int, act: bool, weight_bytes: int, seed: int,
                config_group: int | None = None) -> dict[str, bytes | Path]:
    quant = {"bits": bits, "group_size": group if config_group is None else config_group, "desc_act": act,
             "sym": True, "true_sequential": True}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "num_hidden_layers": 2, "quantization_config": {"quant_method": "gptq", **quant}}
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "quantize_config.json": json.dumps(quant, indent=2).encode(),
        "tokenizer_config.json": b'{"model_max_length": 2048}\n',
        "README.md": b"---\nlicense: apache-2.0\n---\n# Tiny GPTQ test model\n",
        "model.safetensors": safetensors_bytes(weight_bytes, seed),
    }


def sample_gptq_branches(weight_bytes: int = 64 * 1024) -> dict[str, dict[str, bytes | Path]]:
    """A small TheBloke-style GPTQ repo: ``main`` (4bit/128g) and three ``gptq-*`` branches.

    ``gptq-8bit-128g-actorder_False`` deliberately carries a config with
    group_size 64, so ``mcard branches`` has a disagreement to show.
    Contents are deterministic (same bytes, same commit ids on every build).
    """
    return {
        "main": _gptq_files(4, 128, False, weight_bytes, 1),
        "gptq-4bit-32g-actorder_True": _gptq_files(4, 32, True, weight_bytes + 512, 2),
        "gptq-3bit--1g-actorder_True": _gptq_files(3, -1, True, weight_bytes // 2, 3),
        "gptq-8bit-128g-actorder_False": _gptq_files(8, 128, False, weight_bytes * 2, 4, config_group=64),
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def answers(host: str, port: int, path: str = "/api/models/mcard-probe/none/refs") -> bool:
    """Whether an HTTP server on ``host:port`` answers a GET of ``path`` (any status), within a second."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1.0)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return True
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


class OlahServer:
    """olah in offline mode serving ``mirrors_dir`` on a free loopback port.

    ``with OlahServer(mirrors) as hub: ...`` starts it and waits until it
    answers (typically 1-2 s); leaving the block stops it (SIGTERM, then
    SIGKILL after 5 s) and removes its scratch folder unless ``workdir`` was
    given. ``.endpoint`` is ``http://127.0.0.1:<port>``; ``.log_path`` holds
    the server's output for diagnosing failures.
    """

    def __init__(self, mirrors_dir: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
                 workdir: str | Path | None = None, startup_timeout: float = 30.0) -> None:
        self.mirrors_dir = Path(mirrors_dir).resolve()
        self.host = host
        self.port = port or 0
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mcard-olah-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def endpoint(self) -> str:
        """The base URL to use as ``HF_ENDPOINT``."""
        if self._proc is None:
            raise RuntimeError("OlahServer is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "olah.out"

    def _write_config(self, port: int) -> Path:
        (self.mirrors_dir / "models").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "configs.toml"
        config.write_text(
            "[basic]\n"
            f'host = "{self.host}"\nport = {port}\n'
            f'repos-path = "{(self.workdir / "repos").as_posix()}"\n'
            f'mirror-netloc = "{self.host}:{port}"\nmirror-lfs-netloc = "{self.host}:{port}"\n'
            f'mirrors-path = ["{self.mirrors_dir.as_posix()}"]\n'
            "metadata-cache-ttl = 0\n"
            "\n[accessibility]\noffline = true\n",
            encoding="utf-8",
        )
        return config

    def start(self) -> OlahServer:
        """Start the server and block until it answers; raise RuntimeError with its log if it cannot."""
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.port else 3
        last = ""
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            config = self._write_config(port)
            log = open(self.log_path, "wb")
            proc = subprocess.Popen([sys.executable, "-m", "olah.server", "--config", str(config)],
                                    cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if answers(self.host, port):
                    self._proc, self._log, self.port = proc, log, port
                    return self
                time.sleep(0.05)
            stop_process(proc)
            log.close()
            last = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"olah did not start on {self.host}: {last.strip() or 'no output'}")

    def stop(self) -> None:
        """Stop the server (idempotent) and clean up a scratch workdir."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OlahServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process: SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
