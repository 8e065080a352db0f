"""How long `mcard validate` takes on full-size GPTQ checkpoints (goal: about a second).

Builds Llama-2-13B and Llama-2-70B shaped GPTQ files at their real size
(7-36 GB) as *sparse* files: the safetensors header is exactly what the
reference writer would produce, and the tensors validate reads (``g_idx``,
``qzeros``) hold real values, while ``qweight``/``scales`` stay holes on disk.
So the file is byte-for-byte the layout validate sees on a real download,
without writing gigabytes. Then times ``mcard.api.inspect`` (cold start of the
Python process excluded; the CLI adds ~0.4 s of imports).

    python benchmarks/bench_validate.py [--out benchmarks/RESULTS_validate.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from mcard import api
from mcard.core.arch import ModelShape
from mcard.core.safetensors_io import _DTYPE_ORDER, DTYPE_BYTES
from mcard.formats import gptq

MODELS = {
    "Llama-2-13B": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, vocab_size=32000, torch_dtype="float16"),
    "Llama-2-70B": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000, torch_dtype="float16"),
}


def build_sparse(folder: Path, config: dict, bits: int, group: int) -> Path:
    shape = ModelShape.from_config(config)
    expected, _optional = gptq.expected_tensors(shape, bits, group, True, "F16")
    entries = sorted(((n, d[0], s) for n, (d, s) in expected.items()),
                     key=lambda e: (-_DTYPE_ORDER.index(e[1]), e[0]))
    doc: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, dims in entries:
        n = DTYPE_BYTES[dtype] * int(np.prod(dims))
        doc[name] = {"dtype": dtype, "shape": list(dims), "data_offsets": [offset, offset + n]}
        offset += n
    header = json.dumps(doc, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gptq_model-{bits}bit-{group}g.safetensors"
    start = 8 + len(header)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(start + offset)
        zero_word = np.uint32(sum((2 ** (bits - 1) - 1) << (bits * i) for i in range(32 // bits)))
        for name, _dtype, dims in entries:
            begin = doc[name]["data_offsets"][0]
            if name.endswith(".g_idx"):
                data = (np.arange(dims[0], dtype=np.int32) // group).astype("<i4")
            elif name.endswith(".qzeros"):
                data = np.full(dims, zero_word, dtype="<u4")
            else:
                continue
            fh.seek(start + begin)
            fh.write(data.tobytes())
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "quantize_config.json").write_text(json.dumps(
        {"bits": bits, "group_size": group, "desc_act": False, "sym": True, "damp_percent": 0.01,
         "true_sequential": True, "model_file_base_name": path.stem}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in MODELS.items():
            path = build_sparse(Path(tmp) / name, config, 4, 128)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                report = api.inspect(path.parent)
                times.append(time.perf_counter() - t0)
            errors = [f for f in report.all_findings() if f.severity.value == "error"]
            rows.append((name, path.stat().st_size, len(report.files), sorted(times)[len(times) // 2], report.ok, len(errors)))
            print(f"{name}: {path.stat().st_size / 1e9:.2f} GB, median {rows[-1][3]:.2f} s, ok={report.ok}")
    text = ["# `mcard validate` on full-size GPTQ checkpoints", "",
            f"Machine: {platform.machine()}, 2 cores, 24 GiB, CPU only; Python {platform.python_version()}.",
            "", "Command: `python benchmarks/bench_validate.py --out benchmarks/RESULTS_validate.md`", "",
            "| model (4-bit, 128g) | file size | validate median (s) | ok | errors |", "|---|---|---|---|---|"]
    for name, size, _nfiles, median, ok, nerr in rows:
        text.append(f"| {name} | {size / 1e9:.2f} GB | {median:.2f} | {ok} | {nerr} |")
    text += ["", "Files are sparse (header and the g_idx/qzeros validate reads are real; qweight and scales are",
             "holes), so the layout is exactly a real download's. Goal: about a second."]
    if args.out:
        args.out.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
