"""Evaluation results: inline registry tables and lm-evaluation-harness JSON.

lm-evaluation-harness writes ``{"results": {task: {metric: value}}}``:

* v0.4: ``results[task]["acc,none"]`` and ``results[task]["acc_stderr,none"]``
  (``metric,filter``), few-shot counts in ``"n-shot": {task: n}``;
* v0.3: ``results[task]["acc"]`` and ``results[task]["acc_stderr"]``, the
  few-shot count in ``config["num_fewshot"]``.

Values are taken as written (the harness reports fractions, 0.781 not 78.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UnusableInput
from ..core.jsonio import load_json_object

MAX_EVAL_BYTES = 16 * 1024 * 1024  # an lm-eval results file (samples live in other files)
MAX_EVAL_TASKS = 2000  # tasks in one results file: a card shows a few dozen
EXPECTED_SHAPE = (
    'expected lm-evaluation-harness results: {"results": {TASK: {"acc,none": X, "acc_stderr,none": Y}}} (v0.4) '
    'or {"results": {TASK: {"acc": X, "acc_stderr": Y}}} (v0.3)'
)


@dataclass(frozen=True)
class EvalEntry:
    """One result: a metric of this model on a dataset."""

    dataset_name: str
    dataset_type: str
    metric_type: str
    value: float | int
    task_type: str = "text-generation"
    metric_name: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    stderr: float | None = None
    shots: int | None = None
    source_name: str | None = None
    source_url: str | None = None
    variant: str | None = None  # the branch or file it was measured on; None: the repo as a whole

    def sort_key(self) -> tuple[Any, ...]:
        return (self.variant or "", self.dataset_name, self.dataset_config or "", self.metric_type)

    @property
    def display_metric(self) -> str:
        return self.metric_name or self.metric_type


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pick(scores: dict[str, Any], metric: str, filt: str) -> tuple[float | int | None, float | None]:
    """The metric and its stderr from one task's scores, v0.4 keys first, then v0.3."""
    for key, err_key in ((f"{metric},{filt}", f"{metric}_stderr,{filt}"), (metric, f"{metric}_stderr")):
        if key in scores:
            value = _number(scores[key])
            if value is None:
                continue
            stderr = _number(scores.get(err_key))
            return value, (float(stderr) if stderr is not None else None)
    return None, None


def load_lm_eval(
    path: str | Path,
    metrics: list[str] | None = None,
    tasks: list[str] | None = None,
    filter_name: str = "none",
    source_name: str | None = None,
    source_url: str | None = None,
    variant: str | None = None,
    task_type: str = "text-generation",
) -> list[EvalEntry]:
    """Read an lm-evaluation-harness results JSON (v0.3 or v0.4) into sorted entries.

    ``metrics`` defaults to ``["acc"]``; ``tasks`` to every task in the file.
    An unknown shape raises :class:`UnusableInput` saying what was expected.
    """
    data = load_json_object(path, MAX_EVAL_BYTES)
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise UnusableInput(f"no 'results' object; {EXPECTED_SHAPE}", path)
    if len(results) > MAX_EVAL_TASKS:
        raise UnusableInput(f"{len(results)} tasks in 'results' (limit {MAX_EVAL_TASKS}); refused", path)
    if tasks is not None and len(tasks) > MAX_EVAL_TASKS:
        raise UnusableInput(f"{len(tasks)} tasks asked for (limit {MAX_EVAL_TASKS}); refused", path)
    metrics = list(metrics or ["acc"])
    n_shot = data.get("n-shot")
    n_shot = n_shot if isinstance(n_shot, dict) else {}
    config = data.get("config")
    config = config if isinstance(config, dict) else {}
    default_shots = config.get("num_fewshot") if isinstance(config.get("num_fewshot"), int) else None

    wanted = sorted(results) if tasks is None else list(tasks)
    out: list[EvalEntry] = []
    for task in wanted:
        scores = results.get(task)
        if scores is None:
            raise UnusableInput(f"task {task!r} is not in results (found: {', '.join(sorted(results))})", path)
        if not isinstance(scores, dict):
            raise UnusableInput(f"results[{task!r}] is a {type(scores).__name__}; {EXPECTED_SHAPE}", path)
        shots = n_shot.get(task, default_shots)
        shots = shots if isinstance(shots, int) and not isinstance(shots, bool) else None
        for metric in metrics:
            value, stderr = _pick(scores, metric, filter_name)
            if value is None:
                continue
            alias = scores.get("alias") if isinstance(scores.get("alias"), str) else None
            out.append(
                EvalEntry(
                    dataset_name=(alias or task).strip(" -"),
                    dataset_type=task,
                    metric_type=metric,
                    value=value,
                    task_type=task_type,
                    stderr=stderr,
                    shots=shots,
                    source_name=source_name or "lm-evaluation-harness",
                    source_url=source_url,
                    variant=variant,
                )
            )
    if not out:
        raise UnusableInput(
            f"none of the metrics {', '.join(metrics)} found for any task; {EXPECTED_SHAPE}", path
        )
    return sorted(out, key=EvalEntry.sort_key)


def format_value(value: float | int) -> str:
    """A stable, short text for a metric value (no float noise, at most 4 decimals)."""
    if isinstance(value, int):
        return str(value)
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text or "0"
