"""Split GGUF as one variant: grouping, the Hub side (fetch selection, branches, card rows) and the
byte layout gguf-split writes (checked against llama.cpp's own shards in tests/fixtures/llamacpp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FIXTURES
from mcard.card.rows import measure
from mcard.core.errors import UnusableInput
from mcard.formats.gguf import header as _gguf_header, split as _gguf_split
from mcard.hub.model import RemoteFile
from mcard.hub.selection import select_files

SHARDS = sorted((FIXTURES / "llamacpp" / "smol576").glob("*-of-*.gguf"))


def test_names_and_grouping():
    assert _gguf_split.shard_name("m-Q4_K_M", 0, 3) == "m-Q4_K_M-00001-of-00003.gguf"
    assert _gguf_split.parse_shard_name("dir/m-Q4_K_M-00002-of-00003.gguf") == ("dir/m-Q4_K_M", 1, 3)
    assert _gguf_split.parse_shard_name("m-00004-of-00003.gguf") is None
    assert _gguf_split.parse_raw_part("m.Q8_0.gguf-split-b") == ("m.Q8_0.gguf", 1)
    models = _gguf_split.group(["a.gguf", "m-00001-of-00003.gguf", "m-00003-of-00003.gguf", "x.gguf-split-a",
                                "x.gguf-split-b"])
    by = {m.name: m for m in models}
    assert by["m-*-of-00003.gguf"].missing == ["m-00002-of-00003.gguf"] and by["m-*-of-00003.gguf"].kind == "shards"
    assert by["x.gguf"].files == ["x.gguf-split-a", "x.gguf-split-b"] and by["a.gguf"].kind == "file"
    assert _gguf_split.parse_max_size("50G") == 50 * 10**9 and _gguf_split.parse_max_size("1M") == 10**6
    with pytest.raises(UnusableInput):
        _gguf_split.parse_max_size("50GB")


def test_split_kv_bytes_are_what_gguf_split_wrote():
    """The three split keys, byte for byte as llama.cpp's gguf-split appends them (a writer can reuse this)."""
    g = _gguf_header.read(SHARDS[1])
    kv = SHARDS[1].read_bytes()[24:24 + g.kv_bytes]
    assert kv == _gguf_split.split_kv(1, 3, g.kv["split.tensors.count"])
    assert g.split == (1, 3, 11)


def test_plan_by_size_and_by_tensor_count():
    sizes = [100, 40, 40, 100, 8]
    assert _gguf_split.plan(sizes, max_bytes=130) == [[0], [1, 2], [3], [4]]  # padded to 32: 128, 64, 64, 128, 32
    assert _gguf_split.plan(sizes, max_tensors=2) == [[0, 1], [2, 3], [4]]
    assert _gguf_split.plan([100, 200], max_bytes=150) == [[0], [1]]  # a shard may pass the size, as gguf-split's
    with pytest.raises(UnusableInput, match="larger than the split size"):  # gguf-split: "one of splits have 0 tensors"
        _gguf_split.plan([200, 10], max_bytes=150)


def test_fetch_selection_takes_the_whole_set():
    listing = [RemoteFile(p.name, p.stat().st_size, "0" * 40) for p in SHARDS] + [RemoteFile("README.md", 10, "1" * 40)]
    chosen = select_files(listing, "repo@main", names=[SHARDS[0].name])
    assert [f.path for f in chosen.files] == [p.name for p in SHARDS]


def test_branches_and_card_count_a_shard_set_once(tmp_path):
    from mcard.hub.branches import RefReport, _gguf

    ref = RefReport("main", "branch", "0" * 40)
    _gguf(ref, [(p.name, p.stat().st_size) for p in SHARDS] + [("other.gguf", 5)])
    assert [(v["kind"], len(v["files"])) for v in ref.gguf_variants] == [("file", 1), ("shards", 3)]
    assert ref.gguf_variants[1]["size"] == sum(p.stat().st_size for p in SHARDS)
    for p in SHARDS:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    size, _runtimes = measure(tmp_path / SHARDS[0].name)  # a card row measures the whole set
    assert size == sum(p.stat().st_size for p in SHARDS)


def test_write_shards_is_byte_identical_to_gguf_split(tmp_path):
    """mcard's splitter (for publishers: the Hub's 50 GB limit) writes what llama.cpp's gguf-split wrote."""
    src = SHARDS[0].parent / "smol576-Q2_0.gguf"
    written = _gguf_split.write_shards(src, tmp_path / "smol576-Q2_0", max_tensors=4)
    assert [p.name for p in written] == [p.name for p in SHARDS]
    for ours, theirs in zip(written, SHARDS, strict=True):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name
    with pytest.raises(UnusableInput, match="already a shard"):
        _gguf_split.write_shards(SHARDS[0], tmp_path / "again", max_tensors=4)



def test_card_names_a_split_variant_as_its_set():
    assert _gguf_split.display_name("m.Q4_K_M-00001-of-00003.gguf") == "m.Q4_K_M-*-of-00003.gguf"
    assert _gguf_split.display_name("m.Q8_0.gguf-split-a") == "m.Q8_0.gguf-split-*"
    assert _gguf_split.display_name("m.Q4_K_M.gguf") == "m.Q4_K_M.gguf"


def test_card_row_of_a_shard_set(tmp_path):
    """mcard card: a variant given by its first shard is one row, named as the set, with the total size."""
    from mcard.card.render import render_card
    from mcard.core.units import format_size

    for p in SHARDS:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    entry = _entry(tmp_path)
    card = render_card(entry, variant_paths={SHARDS[0].name: tmp_path / SHARDS[0].name})
    rows = [line for line in card.splitlines() if "smol576-Q2_0" in line and line.startswith("|")]
    total = sum(p.stat().st_size for p in SHARDS)
    assert len(rows) == 1 and "smol576-Q2_0-*-of-00003.gguf" in rows[0], rows
    assert f"| {format_size(total)} |" in rows[0], rows  # mcard.core.units' one size formatter
    assert 'allow_patterns=["smol576-Q2_0-*-of-00003.gguf"]' in card and f"{SHARDS[0].name}` brings the" in card


def test_package_puts_the_whole_shard_set_on_the_branch(tmp_path):
    """mcard package of a variant named by its first shard: every shard, under its own name, validated as one."""
    import shutil

    from mcard.core.validate import inspect
    from mcard.pipeline.package import package

    source = tmp_path / "from"
    source.mkdir()
    for p in SHARDS:
        shutil.copy(p, source / p.name)
    pkg = package(_entry(tmp_path), source, tmp_path / "out")
    [branch] = pkg.branches
    assert [f.path for f in branch.files if f.path.endswith(".gguf")] == [p.name for p in SHARDS]
    main = tmp_path / "out" / "main"
    assert all((main / p.name).read_bytes() == p.read_bytes() for p in SHARDS)
    report = inspect(main / SHARDS[0].name)
    assert report.ok and report.params["split"] == "shards" and report.params["files"] == 3
    entry = _entry(tmp_path)  # a `source` shard under another name: renaming would lose the set
    entry.write_text(entry.read_text().replace(f'file = "{SHARDS[0].name}"',
                                               f'file = "x-00001-of-00003.gguf"\nsource = "from/{SHARDS[0].name}"'))
    with pytest.raises(UnusableInput, match="keep their names"):
        package(entry, None, tmp_path / "out2")


def _entry(folder: Path) -> Path:
    """A registry entry whose one GGUF variant is the smol576 Q2_0 shard set, named by its first shard."""
    entry = folder / "smol.toml"
    entry.write_text(f"""[model]
repo = "org/smol576-GGUF"
name = "Smol576 GGUF"
creator = "org"
base_model = "org/smol576"
license = "apache-2.0"
description = "Tiny."
prompt = "none"

[architecture]
model_type = "llama"
hidden_size = 576
intermediate_size = 32
num_hidden_layers = 1
num_attention_heads = 1
num_key_value_heads = 1
head_dim = 32
vocab_size = 96
tie_word_embeddings = true

[[variants]]
file = "{SHARDS[0].name}"
format = "gguf"
type = "Q2_0"
bits = 2
""")
    return entry


def test_sync_fetches_validates_and_measures_a_shard_set(tmp_path):
    """mcard sync on a Hub repo (olah on loopback) holding a shard set: one variant, all shards, the total size."""
    from mcard.pipeline.sync import SyncOptions, sync
    from mcard.testing.hubserver import OlahServer, build_git_repo

    build_git_repo(tmp_path / "mirrors", "org/smol576-GGUF", {"main": {p.name: p for p in SHARDS} | {"README.md": b"# x\n"}})
    entry = _entry(tmp_path)
    with OlahServer(tmp_path / "mirrors") as server:
        [result] = sync(entry, SyncOptions(smoke=False, report_dir=tmp_path / "report", cache_dir=tmp_path / "cache",
                                           endpoint=server.endpoint, device="cpu"))
    assert result.ok, [r.__dict__ for r in result.records]
    [record] = result.records
    assert record.variant == SHARDS[0].name and not record.validate_errors
    assert record.measured_bytes == sum(p.stat().st_size for p in SHARDS)
