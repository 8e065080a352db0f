"""The loopback Hub write API, driven only through huggingface_hub's own client calls, read back through olah."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from mcard.hub import fetch
from mcard.testing.hub import LocalHub
from mcard.testing.hub_write import Account
from mcard.testing.hubserver import free_port, safetensors_bytes

# huggingface_hub's own LFS upload passes the file as `data=` (its code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
ALICE, BOB = "tok-alice", "tok-bob"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    saved = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True  # the test Hub speaks LFS, not Xet
    root = tmp_path_factory.mktemp("hub")
    with LocalHub(root, ALICE, user="alice", namespaces=("alice", "team"),
                  accounts={BOB: Account("bob", ("bob",))}) as server:
        yield server
    constants.HF_HUB_DISABLE_XET = saved


def _api(hub: LocalHub, token: str | bool = ALICE) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=token)


def test_client_writes_what_olah_and_mcard_fetch_read_back(hub: LocalHub, tmp_path: Path) -> None:
    api = _api(hub)
    assert api.whoami()["name"] == "alice"
    api.create_repo("team/writes")
    [root] = api.list_repo_commits("team/writes")
    assert [f.path for f in api.list_repo_tree("team/writes")] == [".gitattributes"]  # the Hub's first commit
    weights = safetensors_bytes(300_000, seed=3)
    hub.stats.clear()
    info = api.create_commit("team/writes", [CommitOperationAdd("model.safetensors", weights),
                                             CommitOperationAdd("config.json", b'{"model_type": "llama"}\n'),
                                             CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# hi\n")],
                             commit_message="add files", parent_commit=root.commit_id)
    assert hub.stats.lfs_bytes == {hashlib.sha256(weights).hexdigest(): len(weights)}  # only the LFS file went by PUT
    api.create_branch("team/writes", branch="gptq-4bit", revision=root.commit_id)
    api.create_commit("team/writes", [CommitOperationAdd("model.safetensors", weights)], commit_message="same object",
                      revision="gptq-4bit")
    assert hub.stats.lfs_bytes == {hashlib.sha256(weights).hexdigest(): len(weights)}  # not sent twice

    refs = {b.name: b.target_commit for b in api.list_repo_refs("team/writes").branches}  # served by olah
    assert refs["main"] == info.oid and set(refs) == {"main", "gptq-4bit"}
    tree = {f.path: f for f in api.list_repo_tree("team/writes", revision=info.oid)}
    assert tree["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert tree["config.json"].lfs is None and tree["config.json"].size == 24
    obj = hub.root / "models" / "team" / "writes" / ".git" / "lfs" / "objects"
    assert len(list(obj.rglob("*"))) == 3  # aa/, aa/bb/, the object: the store olah serves
    path = hf_hub_download("team/writes", "model.safetensors", revision="gptq-4bit", endpoint=hub.endpoint,
                           cache_dir=tmp_path / "hf")
    assert Path(path).read_bytes() == weights
    got = fetch("team/writes:gptq-4bit", endpoint=hub.endpoint, cache_dir=tmp_path / "mc")
    assert {f.path: f.sha256 for f in got.files}["model.safetensors"] == hashlib.sha256(weights).hexdigest()

    api.create_commit("team/writes", [CommitOperationDelete("config.json")], commit_message="rm", revision="main")
    assert "config.json" not in {f.path for f in api.list_repo_tree("team/writes")}
    api.delete_branch("team/writes", branch="gptq-4bit")
    assert {b.name for b in api.list_repo_refs("team/writes").branches} == {"main"}
    with pytest.raises(HfHubHTTPError) as moved:  # the branch moved since root: the commit is refused
        api.create_commit("team/writes", [CommitOperationAdd("x.txt", b"x")], commit_message="late",
                          parent_commit=root.commit_id)
    assert moved.value.response.status_code == 412


def test_tokens_and_namespaces(hub: LocalHub) -> None:
    with pytest.raises(HfHubHTTPError) as bad:
        _api(hub, "not-a-token").whoami()
    assert bad.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as anonymous:
        _api(hub, False).create_repo("alice/anon")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as elsewhere:
        _api(hub).create_repo("bob/not-alices")
    assert elsewhere.value.response.status_code == 403
    _api(hub, BOB).create_repo("bob/model")
    hub.stats.clear()
    with pytest.raises(HfHubHTTPError) as forbidden:
        _api(hub).create_commit("bob/model", [CommitOperationAdd("w.safetensors", safetensors_bytes(1000))],
                                commit_message="not mine")
    assert forbidden.value.response.status_code == 403
    assert hub.stats.lfs_total == 0 and not hub.stats.commits
    with pytest.raises(HfHubHTTPError) as check:
        _api(hub).auth_check("bob/model", write=True)
    assert check.value.response.status_code == 403
    _api(hub).create_repo("alice/secret", private=True)
    with pytest.raises(RepositoryNotFoundError):
        _api(hub, False).list_repo_refs("alice/secret")
    assert [b.name for b in _api(hub).list_repo_refs("alice/secret").branches] == ["main"]


def test_lfs_objects_are_checked_as_they_arrive(hub: LocalHub) -> None:
    api = _api(hub)
    api.create_repo("alice/checked")
    data = safetensors_bytes(50_000, seed=9)
    op = CommitOperationAdd("model.safetensors", data)
    wrong = hashlib.sha256(b"something else").digest()
    op.upload_info.sha256 = wrong  # the client announces one object and sends other bytes
    hub.stats.clear()
    with pytest.raises(RuntimeError, match="Error while uploading"):  # huggingface_hub wraps the 400 it got
        api.create_commit("alice/checked", [op], commit_message="lie")
    assert ("PUT", f"/lfs/upload/alice%2Fchecked/{wrong.hex()}", 400) in hub.stats.log  # refused on arrival
    assert hub.stats.lfs_bytes == {wrong.hex(): len(data)} and not hub.stats.commits
    store = hub.root / "models" / "alice" / "checked" / ".git" / "lfs"
    assert not any(p.is_file() for p in (store / "objects").rglob("*"))  # neither oid was stored
    assert not any((store / "tmp").glob("*"))  # the partial upload was removed
    assert [f.path for f in api.list_repo_tree("alice/checked")] == [".gitattributes"]


def test_python_m_hub_prints_endpoint_needs_token_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mcard.testing.hub", "--root", str(tmp_path), "--port", str(port),
                             "--token", "cli-token"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint == f"http://127.0.0.1:{port}"
        with pytest.raises(HfHubHTTPError):
            HfApi(endpoint=endpoint, token="wrong").create_repo("mcard/x")
        HfApi(endpoint=endpoint, token="cli-token").create_repo("mcard/x")
        assert (tmp_path / "models" / "mcard" / "x" / ".git").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read()
        assert "cli-token" not in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the port is free again: nothing was left running
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.1)
    else:
        pytest.fail("the hub still answers after SIGTERM")
