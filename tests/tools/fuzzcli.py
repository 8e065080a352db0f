"""Structure-aware fuzzing through the CLI, where an internal error is a failure.

A case *fails* when the command raises, prints ``internal error`` or a
traceback, exits with a code other than 0, 1 or 2, or runs longer than
``SLOW`` seconds. One line and exit 2 for a hostile input is the expected
answer, not a failure; ``mcard: internal error: ...`` (what :func:`mcard.cli.main`
prints for an exception mcard did not expect) is a failure.

Campaigns (each takes a count and a seed; case ``i`` is reproducible alone):

* ``validate``: mutated builder-written variants (:mod:`fuzzkit`) through ``mcard validate DIR --json``;
* ``registry``: mutated copies of the real registry entries (values swapped for hostile ones, keys dropped or
  added, bytes flipped) through ``mcard plan`` and ``mcard card render``;
* ``card``: mutated front matter of a rendered card through ``mcard card check --json``;
* ``listing``: hostile refs, tree entries, sizes and headers from :class:`mcard.testing.hostile_hub.HostileHub`
  through ``fetch --dry-run``, ``branches`` and ``validate REPO:BRANCH``.

Run by ``tests/core/test_fuzz_validate.py`` (a seeded share, a few seconds) and by hand::

    python tests/tools/fuzzkit.py --kind registry --count 2000 --seed 1
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]  # the checkout
SLOW = 20.0  # the listing campaign's MCARD_DEADLINE is 8 s

HOSTILE_STRINGS = [
    "", " ", "[bold]x[/]", "[/]", "[", "\x1b[31mred", "a\nb", "\r", "..", "../x", "/etc/passwd", "~/x",
    "/dev/zero", "x" * 300, "/".join(["d"] * 300), "é" * 100, "\ud800", "main\"; touch x; echo \"", "$(id)",
    "{{ 7*7 }}", "{% raw %}", "%s%n", "null", "NaN", "Q4_K_Z", "IQ2_XS", "(.+)+X", "(", "*", "hf_" + "A" * 34,
]
HOSTILE_VALUES: list[Any] = [
    0, -1, 1, 2**31, 2**63, -(2**63), 10**20, 1e999, -1e999, float("nan"), 0.5, True, False, [], {}, [1, "a"],
    {"a": {"b": []}}, datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 12, 0),
]


def run_cli(args: list[str], env: dict[str, str] | None = None) -> str | None:
    """Run one command in-process; None when it answered as designed, else what went wrong.

    With ``HF_TOKEN`` in ``env``, printing the token is a failure too.
    """
    from mcard.cli import app

    started = time.monotonic()
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    took = time.monotonic() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else "?"
        return f"{type(exc).__name__} at {where}: {str(exc)[:160]}"
    for marker in ("internal error", "Traceback (most recent call last)"):
        if marker in result.output:
            at = result.output.index(marker)
            return f"prints {marker!r}: {result.output[at:at + 1500]!r}"
    if result.exit_code not in (0, 1, 2):
        return f"exit code {result.exit_code}"
    if took > SLOW:
        return f"slow: {took:.1f} s"
    token = (env or {}).get("HF_TOKEN")
    if token and token in result.output:
        return "the token was printed"
    return None


def hostile(rnd: random.Random) -> Any:
    return copy.deepcopy(rnd.choice(HOSTILE_STRINGS if rnd.random() < 0.5 else HOSTILE_VALUES))


# -- TOML text from a dict (enough for registry entries, hostile values included) -------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, datetime.date)):
        return value.isoformat() if isinstance(value, datetime.date) else str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True).replace("\\ud800", "\\u00e9")  # TOML has no lone surrogates
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def toml_text(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for key, value in doc.items():
        if not isinstance(value, (dict, list)) or isinstance(value, list) and not all(isinstance(v, dict) for v in value):
            lines.append(f"{json.dumps(str(key))} = {_toml_value(value)}")
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"\n[{json.dumps(str(key))}]")
            lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                lines.append(f"\n[[{json.dumps(str(key))}]]")
                lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _tables(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = [doc]
    for value in doc.values():
        if isinstance(value, dict):
            out.append(value)
        elif isinstance(value, list):
            out += [v for v in value if isinstance(v, dict)]
    return out


def mutate_doc(doc: dict[str, Any], rnd: random.Random) -> None:
    """Swap, drop or add values in the tables of a parsed TOML/YAML document."""
    for _ in range(rnd.randint(1, 3)):
        table = rnd.choice(_tables(doc))
        keys = list(table)
        op = rnd.random()
        if keys and op < 0.6:
            table[rnd.choice(keys)] = hostile(rnd)
        elif keys and op < 0.75:
            del table[rnd.choice(keys)]
        elif op < 0.9:
            table[rnd.choice(["path", "config", "original_card", "branch", "file", "type", "repo", "x", ""])] = hostile(rnd)
        elif keys:
            key = rnd.choice(keys)
            table[key] = [hostile(rnd) for _ in range(rnd.choice([0, 1, 3, 3000]))]


def _flip(text: str, rnd: random.Random) -> str:
    if not text:
        return text
    i = rnd.randrange(len(text))
    return text[:i] + rnd.choice(["[", "]", '"', "\\", "\n", "=", "#", "'''", "\x00", "{", ""]) + text[i + 1:]


# -- campaigns ----------------------------------------------------------------------------------------------------
def registry_case(rnd: random.Random, work: Path) -> list[list[str]]:
    from mcard.core.jsonio import tomllib

    reg = work / "registry"
    shutil.copytree(ROOT / "registry", reg, ignore=shutil.ignore_patterns("examples"))
    entry = rnd.choice(sorted(reg.glob("*.toml")))
    if rnd.random() < 0.8:
        doc = tomllib.loads(entry.read_text(encoding="utf-8"))
        mutate_doc(doc, rnd)
        entry.write_text(toml_text(doc), encoding="utf-8")
    else:
        text = entry.read_text(encoding="utf-8")
        for _ in range(rnd.randint(1, 4)):
            text = _flip(text, rnd)
        entry.write_text(text, encoding="utf-8")
    return [["plan", str(entry)], ["card", "render", str(entry)]]


def card_case(rnd: random.Random, work: Path) -> list[list[str]]:
    import yaml

    from mcard.card.render import render_card

    text = render_card(ROOT / "registry" / rnd.choice(["llama-13b.toml", "alpaca-13b-int4.toml", "qlora-instruct.toml"]))
    _, front, body = text.split("---\n", 2)
    if rnd.random() < 0.8:
        meta = yaml.safe_load(front)
        mutate_doc(meta, rnd)
        front = yaml.safe_dump(meta, allow_unicode=True)
    else:
        for _ in range(rnd.randint(1, 4)):
            front = _flip(front, rnd)
    card = work / "README.md"
    card.write_text(f"---\n{front}---\n{body}", encoding="utf-8", errors="replace")
    return [["card", "check", str(card), "--json"]]


def validate_case(rnd: random.Random, work: Path, seeds: dict[str, Path]) -> list[list[str]]:
    import fuzzkit

    name = rnd.choice(sorted(seeds))
    case = work / "case"
    case.mkdir()
    fuzzkit.make_case(seeds[name], case, rnd)
    return [["validate", str(fuzzkit._single_file(name, case)), "--json"]]


def _tree_entry(rnd: random.Random) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": "a" * 40, "size": 10, "path": f"f{rnd.randrange(100)}.json"}
    for _ in range(rnd.randint(1, 3)):
        entry[rnd.choice(["type", "oid", "size", "path", "lfs", "x"])] = hostile(rnd) if rnd.random() < 0.8 else \
            {"oid": hostile(rnd), "size": hostile(rnd), "pointerSize": 134}
    return entry


def listing_case(rnd: random.Random, hub: Any) -> list[list[str]]:
    from mcard.testing.hostile_hub import Tricks

    tricks = Tricks()
    op = rnd.random()
    if op < 0.45:
        tricks.tree_extra = [_tree_entry(rnd) for _ in range(rnd.randint(1, 3))]
    elif op < 0.6:
        tricks.size_override = {"config.json": hostile(rnd)}
    elif op < 0.75:
        tricks.refs_extra = [str(hostile(rnd))[:300] for _ in range(rnd.randint(1, 2))]
    elif op < 0.85:
        tricks.range_total = rnd.choice([0, 1, 2**63, 12345])
    else:
        tricks.echo_token = ("/resolve/",) if rnd.random() < 0.5 else ()
        tricks.content_range_echo = not tricks.echo_token
    hub.tricks = tricks
    repo = "org/fuzz"
    return [["fetch", repo, "--dry-run", "--cache-dir", "{tmp}"], ["branches", repo], ["validate", f"{repo}:main"]]


def campaign(kind: str, count: int, seed: int, root: Path | None = None,
             report: Callable[[str], None] = print, first: int = 0) -> list[tuple[int, str, str]]:
    """Run cases ``first`` .. ``first + count - 1`` of ``kind``; returns (case, command, failure) for every failure."""
    root = Path(root or tempfile.mkdtemp(prefix=f"mcard-fuzz-{kind}-"))
    failures: list[tuple[int, str, str]] = []
    seeds: dict[str, Path] = {}
    hub = None
    env = None
    if kind == "validate":
        import fuzzkit

        seeds = fuzzkit.build_seeds(root / "seeds")
    if kind == "listing":
        from mcard.core.arch import tiny_config
        from mcard.formats import gptq
        from mcard.testing.hostile_hub import HostileHub

        with tempfile.TemporaryDirectory() as tmp:
            gptq.write_variant(Path(tmp), tiny_config())
            files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
        hub = HostileHub({"org/fuzz": {"main": files, "other": {"config.json": b"{}"}}}).__enter__()
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "fuzz-secret-token-123", "HF_HUB_OFFLINE": "0",
               "MCARD_READ_TIMEOUT": "3", "MCARD_DEADLINE": "8"}
    try:
        for i in range(first, first + count):
            rnd = random.Random(seed * 1_000_003 + i)
            work = Path(tempfile.mkdtemp(dir=root))
            try:
                if kind == "registry":
                    commands = registry_case(rnd, work)
                elif kind == "card":
                    commands = card_case(rnd, work)
                elif kind == "validate":
                    commands = validate_case(rnd, work, seeds)
                elif kind == "listing":
                    commands = listing_case(rnd, hub)
                else:
                    raise ValueError(f"unknown campaign {kind!r}")
                for args in commands:
                    args = [a.replace("{tmp}", str(work / "cache")) for a in args]
                    problem = run_cli(args, env)
                    if problem is not None:
                        failures.append((i, " ".join(args)[:200], problem))
                        report(f"FAIL #{i} [{kind}] {' '.join(args)[:120]}: {problem}")
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if hub is not None:
            hub.__exit__(None, None, None)
    return failures


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["registry", "card", "validate", "listing"], required=True)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--first", type=int, default=0, help="the first case (to rerun one: --first N --count 1)")
    args = ap.parse_args()
    found = campaign(args.kind, args.count, args.seed, first=args.first)
    print(f"{args.count} {args.kind} cases, {len(found)} failures")
    sys.exit(1 if found else 0)
