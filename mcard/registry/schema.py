"""The registry TOML schema: which keys each table takes, of which kinds, and the checks.

Every error is an :class:`UnusableInput` naming the file and the key path.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from ..core.errors import UnusableInput

# The kinds of TOML value a key may take, as error messages name them.
STR, INT, FLOAT, BOOL, LIST, TABLE = "a string", "an integer", "a number", "a boolean", "an array", "a table"


def _is(kind: str, value: Any) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list)
    if kind == TABLE:
        return isinstance(value, dict)
    raise AssertionError(kind)


# key -> (accepted kinds, required)
TOP_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "model": ((TABLE,), True),
    "architecture": ((TABLE,), False),
    "variants": ((LIST,), True),
    "evaluations": ((LIST,), False),
    "tables": ((LIST,), False),
}
MODEL_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "repo": ((STR,), True),
    "name": ((STR,), True),
    "license": ((STR,), True),
    "creator": ((STR,), False),
    "base_model": ((STR,), False),
    "base_model_name": ((STR,), False),
    "description": ((STR,), False),
    "prompt": ((STR, TABLE), False),
    "system_message": ((STR,), False),
    "original_card": ((STR,), False),
    "license_file": ((STR,), False),
    "quantized_by": ((STR,), False),
    "tags": ((LIST,), False),
    "pipeline_tag": ((STR,), False),
    "inference": ((BOOL,), False),
    "language": ((LIST,), False),
    "notes": ((LIST,), False),
    "links": ((LIST,), False),
}
PROMPT_SPEC = {"name": ((STR,), True), "text": ((STR,), True)}
LINK_SPEC = {"text": ((STR,), True), "url": ((STR,), True)}
VARIANT_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "format": ((STR,), True),
    "branch": ((STR,), False),
    "file": ((STR,), False),
    "bits": ((INT,), False),
    "group_size": ((INT,), False),
    "desc_act": ((BOOL,), False),
    "sym": ((BOOL,), False),
    "checkpoint_format": ((STR,), False),
    "version": ((STR,), False),
    "zero_point": ((BOOL,), False),
    "double_quant": ((BOOL,), False),
    "type": ((STR,), False),
    "r": ((INT,), False),
    "alpha": ((INT, FLOAT), False),
    "dropout": ((FLOAT,), False),
    "target_modules": ((LIST,), False),
    "made_with": ((STR,), False),
    "description": ((STR,), False),
    "size": ((STR, INT), False),
    "ram": ((STR, INT), False),
    "dataset": ((STR,), False),
    "seq_len": ((INT,), False),
    "damp_percent": ((FLOAT,), False),
    "source": ((STR,), False),
}
EVAL_INLINE_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "dataset": ((STR,), True),
    "dataset_type": ((STR,), False),
    "metric": ((STR,), True),
    "value": ((FLOAT,), True),
    "metric_name": ((STR,), False),
    "task": ((STR,), False),
    "config": ((STR,), False),
    "split": ((STR,), False),
    "stderr": ((FLOAT,), False),
    "shots": ((INT,), False),
    "source_name": ((STR,), False),
    "source_url": ((STR,), False),
    "variant": ((STR,), False),
}
EVAL_FILE_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "path": ((STR,), True),
    "metrics": ((LIST,), False),
    "tasks": ((LIST,), False),
    "filter": ((STR,), False),
    "task": ((STR,), False),
    "source_name": ((STR,), False),
    "source_url": ((STR,), False),
    "variant": ((STR,), False),
}
TABLE_SPEC: dict[str, tuple[tuple[str, ...], bool]] = {
    "title": ((STR,), True),
    "columns": ((LIST,), True),
    "rows": ((LIST,), True),
    "caption": ((STR,), False),
}


def check_keys(data: dict[str, Any], spec: dict[str, tuple[tuple[str, ...], bool]], where: str, file: Path) -> None:
    """Unknown keys (with the closest valid one), missing required keys, wrong types."""
    for key in data:
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(spec)})"
            raise UnusableInput(f"{_join(where, key)}: unknown key {key!r}{hint}", file)
    for key, (kinds, required) in spec.items():
        if key not in data:
            if required:
                raise UnusableInput(f"{where or 'top level'}: missing required key {key!r}", file)
            continue
        if not any(_is(k, data[key]) for k in kinds):
            raise UnusableInput(
                f"{_join(where, key)}: expected {' or '.join(kinds)}, found {kind_of(data[key])}", file
            )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def kind_of(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def list_of(value: list[Any], kind: str, where: str, file: Path) -> list[Any]:
    for i, item in enumerate(value):
        if not _is(kind, item):
            raise UnusableInput(f"{where}[{i}]: expected {kind}, found {kind_of(item)}", file)
    return value


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: str | int, where: str = "", file: str | Path | None = None) -> int:
    """``7260000000``, ``"7.26 GB"`` (decimal), ``"512 MiB"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UnusableInput(f"{where}: a size cannot be negative", file)
        return value
    found = _SIZE.match(str(value))
    if not found:
        raise UnusableInput(f"{where}: expected a size like \"7.26 GB\" or a byte count, found {value!r}", file)
    return int(round(float(found.group(1)) * _UNITS[found.group(2).lower()]))
