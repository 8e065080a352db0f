"""Driver-level validate behaviour that spans formats."""

from __future__ import annotations

from mcard.core.validate import inspect
from mcard.formats import gptq, hf


def test_configs_without_weights_give_one_finding(tmp_path, tiny_cfg):
    """A branch whose weights never arrived (a failed fetch) is one clear error, not one per tensor."""
    gptq.write_variant(tmp_path, tiny_cfg, bits=4, group_size=128)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    report = inspect(tmp_path)
    assert not report.ok
    errors = [f for f in report.findings if f.severity.value == "error"]
    assert [f.code for f in errors] == ["no-weights"]
    assert "63 tensors expected" in errors[0].message  # 14 linears x 4 tensors + 7 fp tensors; biases optional


def test_fp16_checkpoint_without_weights(tmp_path, tiny_cfg):
    hf.write_variant(tmp_path, tiny_cfg)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "notes.safetensors.txt").write_text("not a model")
    # only config.json and a text file remain: no model at all
    from mcard.core.errors import UnusableInput

    try:
        inspect(tmp_path)
    except UnusableInput as exc:
        assert "no model" in str(exc)
    else:  # pragma: no cover - the assertion below explains the failure
        raise AssertionError("a folder with only config.json must be unusable input")
