"""mcard size --format gguf against convert_hf_to_gguf on a BPE tokenizer.json (tests/fixtures/llamacpp/llamabpe).

make_bpe_fixture.py wrote the folder and, with convert_hf_to_gguf.py of the llama.cpp commit in the
fixtures' README, ``llamabpe-vocab.gguf.gz`` (``--vocab-only``: the kv section, no tensors) and
``llamabpe.json`` (the size and kv size of the same folder converted with ``--outtype f16``).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, run_cli
from mcard.core.arch import ModelShape
from mcard.formats import gguf
from mcard.formats.gguf import header as gguf_header, kv as gguf_kv

HERE = FIXTURES / "llamacpp" / "llamabpe"
FACTS = json.loads((HERE / "llamabpe.json").read_text())

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The model folder as convert read it (its name is the model's general.name)."""
    out = tmp_path_factory.mktemp("bpe") / "llamabpe"
    out.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(HERE / name, out / name)
    (out / "tokenizer.json").write_bytes(gzip.decompress((HERE / "tokenizer.json.gz").read_bytes()))
    return out


def _config(folder: Path) -> tuple[dict, ModelShape]:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg, ModelShape.from_config(cfg)


def test_bpe_kv_section_equals_converts(folder, tmp_path):
    """The kv section predicted from tokenizer.json equals convert's, byte for byte."""
    cfg, shape = _config(folder)
    predicted, why = gguf_kv.kv_prediction(folder, cfg, shape)
    assert why is None and predicted == FACTS["f16"]["kv_bytes"] == 1_768_479
    # the vocab-only file holds every kv pair but general.size_label (convert writes it only with tensors)
    vocab_only = tmp_path / "vocab.gguf"
    vocab_only.write_bytes(gzip.decompress((HERE / "llamabpe-vocab.gguf.gz").read_bytes()))
    label = gguf_kv._key("general.size_label") + gguf_kv._string(gguf_kv.size_label(shape.parameter_count()))
    assert gguf_header.read(vocab_only).kv_bytes + label == predicted


def test_bpe_whole_file_size_equals_converts(folder):
    """mcard size --format gguf --type F16 predicts convert's f16 file to the byte, kv section exact."""
    out = run_cli("size", str(folder / "config.json"), "--format", "gguf", "--type", "F16", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["params"]["kv"] == {"exact": True, "bytes": FACTS["f16"]["kv_bytes"]}
    assert doc["total_bytes"] == FACTS["f16"]["file_bytes"] == 8_278_464


def test_unknown_pre_tokenizer_keeps_the_range_and_says_why(folder, tmp_path):
    """A pre-tokenizer convert does not know: the stated range, and why.

    With add_prefix_space the tokenizer encodes CHKTXT differently; convert_hf_to_gguf of the pinned
    commit, run by hand on this folder, logged chkhsh e6aa21b6...ab8fb and refused it (NotImplementedError).
    """
    odd = tmp_path / "llamabpe"
    shutil.copytree(folder, odd)
    tok_cfg = json.loads((odd / "tokenizer_config.json").read_text())
    (odd / "tokenizer_config.json").write_text(json.dumps(tok_cfg | {"add_prefix_space": True}))
    cfg, shape = _config(odd)
    est = gguf.predict_size(shape, "F16", model_dir=odd, config_doc=cfg)
    kv = est.params["kv"]
    assert kv["exact"] is False and kv["low"] <= FACTS["f16"]["kv_bytes"] <= kv["high"]
    assert "does not know this pre-tokenizer (chkhsh e6aa21b6520501ecbc43167ef8aeae5568167adb137796d562d0696ca43ab8fb)" \
        in kv["why"]
    assert any("not exact: convert_hf_to_gguf (llama.cpp 0c1e57098) does not know" in n for n in est.notes)


def test_without_transformers_the_range_says_so(folder):
    """convert reads the tokenizer with transformers: without it mcard cannot hash it, and says so."""
    code = ("import sys, json; sys.modules['transformers'] = None\n"
            "from mcard.core.arch import ModelShape\nfrom mcard.formats.gguf import kv\n"
            f"d = {str(folder)!r}\ncfg = json.load(open(d + '/config.json'))\n"
            "print(kv.kv_prediction(d, cfg, ModelShape.from_config(cfg)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(None, 'transformers is not installed (convert_hf_to_gguf reads the tokenizer with it)')"


def test_a_tokenizer_with_its_own_code_is_never_loaded(folder, tmp_path):
    """auto_map in tokenizer_config.json names code shipped with the folder: mcard does not run it (nor
    ask transformers to), keeps the range and says why; the planted module would leave a marker if imported."""
    odd = tmp_path / "llamabpe"
    shutil.copytree(folder, odd)
    marker = tmp_path / "ran"
    (odd / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    tok_cfg = json.loads((odd / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", "evil_tokenizer.EvilTokenizer"]}
    (odd / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    cfg, shape = _config(odd)
    kv = gguf.predict_size(shape, "F16", model_dir=odd, config_doc=cfg).params["kv"]
    assert kv["exact"] is False and "auto_map" in kv["why"] and not marker.exists()
