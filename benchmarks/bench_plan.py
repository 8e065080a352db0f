"""How long `mcard plan` takes for a large registry (goal: under 1 s for 10,000 variants).

Writes a synthetic registry (ENTRIES files x VARIANTS variants, half GPTQ branches of 3, 4 and
8 bits, half GGUF files of five mixes, each with a 7B llama architecture), then times the library
call (`mcard.pipeline.plan.plan_jobs`, imports done) and the whole `mcard plan` command (a fresh process:
interpreter start, imports, TOML parsing, checks, batching), and compares with parsing the same
TOML alone. Writes benchmarks/RESULTS_plan.md.

    python benchmarks/bench_plan.py [--entries 100] [--variants 100]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ARCH = ("[architecture]\nmodel_type = \"llama\"\nhidden_size = 4096\nintermediate_size = 11008\n"
        "num_hidden_layers = 32\nnum_attention_heads = 32\nnum_key_value_heads = 32\nvocab_size = 32000\n\n")
MIXES = ("Q4_0", "Q4_K_M", "Q8_0", "Q5_K_M", "Q6_K")


def write_registry(folder: Path, entries: int, variants: int) -> None:
    """``entries`` registry files of ``variants`` variants each, alternately GPTQ and GGUF."""
    folder.mkdir(parents=True, exist_ok=True)
    for e in range(entries):
        kind = "gguf" if e % 2 else "gptq"
        text = (f'[model]\nrepo = "org/m{e}-{kind}"\nname = "M{e}"\nlicense = "apache-2.0"\n'
                f'base_model = "org/m{e}"\n\n' + ARCH)
        for i in range(variants):
            if kind == "gguf":
                mix = MIXES[i % len(MIXES)]
                text += f'[[variants]]\nfile = "m{e}.{i}.{mix}.gguf"\nformat = "gguf"\ntype = "{mix}"\n\n'
            else:
                text += f'[[variants]]\nbranch = "b{i}"\nformat = "gptq"\nbits = {(4, 8, 3)[i % 3]}\ngroup_size = 128\n\n'
        (folder / f"m{e:05d}.toml").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--variants", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS_plan.md"))
    args = ap.parse_args()
    import compileall

    import mcard
    from mcard.pipeline.plan import plan_jobs

    # bytecode cached as an installed wheel has it (an editable install under PYTHONDONTWRITEBYTECODE=1
    # would otherwise compile every mcard module on each start: about 0.1 s of the command's time)
    compileall.compile_dir(Path(mcard.__file__).parent, quiet=1)

    with tempfile.TemporaryDirectory() as tmp:
        reg = Path(tmp) / "registry"
        write_registry(reg, args.entries, args.variants)
        files = sorted(reg.glob("*.toml"))
        toml_runs, plan_runs, cmd_runs, cpu_runs = [], [], [], []
        for _ in range(args.repeats):  # the first plan_jobs() call also imports the format modules
            t = time.perf_counter()
            for f in files:
                tomllib.loads(f.read_text())
            toml_runs.append(time.perf_counter() - t)
            t = time.perf_counter()
            jobs = plan_jobs(reg)
            plan_runs.append(time.perf_counter() - t)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mcard.cli", "plan", str(reg)], check=True, stdout=subprocess.DEVNULL)
            cmd_runs.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_runs.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    n = args.entries * args.variants
    from machine import describe  # benchmarks/ is on sys.path when the script runs (the tests import only write_registry)

    def row(what: str, runs: list[float]) -> str:
        return f"| {what} | {statistics.median(runs):.3f} | {', '.join(f'{x:.3f}' for x in runs)} |"

    lines = [
        "# `mcard plan` on a large registry", "",
        f"Machine: {describe()}. Command: `python benchmarks/bench_plan.py --entries {args.entries} "
        f"--variants {args.variants} --repeats {args.repeats}`.", "",
        f"| what | seconds (median of {args.repeats}) | runs |", "|---|---|---|",
        row(f"parse the TOML files alone (tomllib), {len(files)} files", toml_runs),
        row(f"`plan_jobs()`: parse, check, batch {n} variants into {len(jobs)} jobs (the first run imports the formats)",
            plan_runs),
        row("`mcard plan` command, wall clock (interpreter start and imports included)", cmd_runs),
        row("`mcard plan` command, CPU time (user + system)", cpu_runs), "",
        f"{sum(j['gpu'] for j in jobs)} of the {len(jobs)} jobs go to a GPU runner.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
