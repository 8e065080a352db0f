"""Findings and the report object behind ``mcard validate``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# File kinds that hold weights: what a variant's size (measured and predicted) counts.
WEIGHT_KINDS = ("safetensors", "gguf", "ggml", "pickle")


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One observation about a variant.

    ``file`` is relative to the inspected path, ``where`` names a tensor, a
    config field or a header part (empty when the finding is about the file).
    ``code`` is a stable machine-readable identifier (``missing-tensor``...).
    """

    severity: Severity
    code: str
    file: str
    where: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "file": self.file,
            "where": self.where,
            "message": self.message,
        }


@dataclass
class FileEntry:
    """A file of the variant with its measured and (when known) expected size."""

    path: str
    size: int
    kind: str  # safetensors, gguf, ggml, pickle, json, other
    expected_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "kind": self.kind, "expected_size": self.expected_size}


@dataclass
class Runtime:
    """Whether a runtime can load the variant, by its published rules."""

    name: str
    compatible: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compatible": self.compatible, "reason": self.reason}


@dataclass
class Report:
    """Everything ``validate`` learned about a variant, without loading weights."""

    path: str
    format: str = "unknown"
    config_source: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    runtimes: list[Runtime] = field(default_factory=list)
    predicted_bytes: int | None = None
    # Sub-reports, e.g. one per GGUF file of a folder holding many quant files.
    parts: list[Report] = field(default_factory=list)
    # Set by ``validate REPO`` (mcard.hub.remote_validate): repo, revision, commit, bytes_read, requests...
    remote: dict[str, Any] | None = None

    # -- building -----------------------------------------------------------
    def add(self, severity: Severity, code: str, file: str, where: str, message: str) -> None:
        self.findings.append(Finding(severity, code, file, where, message))

    def error(self, code: str, file: str, where: str, message: str) -> None:
        self.add(Severity.ERROR, code, file, where, message)

    def warning(self, code: str, file: str, where: str, message: str) -> None:
        self.add(Severity.WARNING, code, file, where, message)

    def info(self, code: str, file: str, where: str, message: str) -> None:
        self.add(Severity.INFO, code, file, where, message)

    # -- reading ------------------------------------------------------------
    def all_findings(self) -> list[Finding]:
        out = list(self.findings)
        for part in self.parts:
            out.extend(part.all_findings())
        return out

    @property
    def ok(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.all_findings())

    @property
    def actual_bytes(self) -> int:
        """Bytes of the weights files, what ``predicted_bytes`` predicts: configs are not counted, nor
        pickle weights next to safetensors ones (loaders read the safetensors)."""
        kinds = ("safetensors",) if any(f.kind == "safetensors" for f in self.files) else WEIGHT_KINDS
        return sum(f.size for f in self.files if f.kind in kinds)

    def codes(self) -> set[str]:
        return {f.code for f in self.all_findings()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "format": self.format,
            "config_source": self.config_source,
            "params": self.params,
            "findings": [f.to_dict() for f in self.findings],
            "files": [f.to_dict() for f in self.files],
            "runtimes": [r.to_dict() for r in self.runtimes],
            "actual_bytes": self.actual_bytes,
            "predicted_bytes": self.predicted_bytes,
            "parts": [p.to_dict() for p in self.parts],
            **({"remote": self.remote} if self.remote is not None else {}),
        }
