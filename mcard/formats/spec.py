"""What mcard knows about one format, in one class: :class:`FormatSpec`.

Every part of mcard outside :mod:`mcard.formats` asks a format's spec rather than keeping a
table keyed by format names: the registry (aliases, keys, parameters, size parameters), the
card (its :class:`CardSpec`: family, template, columns, tags, cells), ``sync``/``plan`` (the
parameters compared with the files, whether a kernel runs), ``smoke`` (layers, tolerance),
``package`` (configs, weights file name), remote validate (the byte ranges to fetch).

The vocabulary, one name per thing:

* **format**: an on-disk layout, one folder ``mcard/formats/<name>/`` and one spec:
  ``gptq``, ``awq``, ``bnb``, ``gguf``, ``ggml``, ``lora``, ``hf`` (a plain float
  checkpoint as transformers saves it) and ``pickle`` (its folder is ``pickled/``: a
  package named ``pickle`` would shadow the standard library's). ``validate`` reports it.
* **alias**: a name a registry entry (``format = "nf4"``) and ``mcard size --format`` take
  for a format, with the parameters it implies: ``nf4`` = ``bnb`` with ``quant_type=nf4``,
  ``fp16`` = ``hf`` with ``dtype=F16``. A format without aliases cannot be sized or listed
  in an entry (``pickle``).
* **family**: the card a repo's variants share (:attr:`CardSpec.family`, its template
  ``templates/<family>.md.j2``): a format's own name; ``ggml`` variants use ``gguf``'s card.

The kernel side keeps its own authority: :mod:`cupy_kernels.limits` says which layers the
int4 kernels serve; a spec's :meth:`FormatSpec.kernel_runs` and the format's ``smoke`` module
ask it.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.errors import UnusableInput

if TYPE_CHECKING:
    from ..core.report import Report, Runtime
    from ..core.size import SizeEstimate
    from ..core.variant import Variant
    from ..registry.entry import RegistryVariant
    from .params import Param


# The int4 kernels accumulate in fp32 and round once to fp16: their error against the float32
# reference is fp16's rounding of the output, at most 2^-11 ~ 4.9e-4 relative per element; 2e-3 leaves
# a 4x margin while a layout mistake (one nibble, one zero, one group) gives 1e-2 to 1.
INT4_KERNEL_TOLERANCE = 2e-3


@dataclass(frozen=True)
class CardSpec:
    """How a family's model card looks: template, provided-files columns, tags.

    Args:
        family: the family's name (a format's name); its template is ``templates/<family>.md.j2``.
        columns: the provided-files table's columns, in order (:meth:`FormatSpec.card_cells` fills them).
        tags: tags every card of the family carries, after the variants' aliases.
        bits_tags: the variants' bits become ``N-bit`` tags.
        size_column: the column that holds the size (``card check`` compares it).
        quantized: the weights are quantized (``card check`` asks for a quantizer's credit).
        library_name: the front matter's ``library_name`` (adapters: ``peft``), when it is not transformers.
        ram: rows carry a "Max RAM required" figure: recorded, else size + llama.cpp's overhead.
        sort_by_size: rows are sorted by size (unknown last), then by name; else registry order.
        check_alias_column: a column whose cells must name the variant's alias (``card check``).
    """

    family: str
    columns: tuple[str, ...]
    tags: tuple[str, ...] = ()
    bits_tags: bool = False
    size_column: str = "Size"
    quantized: bool = True
    library_name: str | None = None
    ram: bool = False
    sort_by_size: bool = False
    check_alias_column: str | None = None

    @property
    def template(self) -> str:
        return f"{self.family}.md.j2"


class FormatSpec(ABC):
    """One format: its names, parameters, card, and how each part of mcard handles it.

    A subclass per format lives in ``mcard/formats/<folder>/spec.py`` and is listed once in
    :data:`mcard.formats.SPEC_MODULES`. Class attributes state facts; methods answer questions
    that need a variant. The defaults are what a format without that capability answers
    (no size prediction, no smoke layers, no quantization_config...), so a subclass states
    only what its format has. The format's reading code stays in its folder's modules
    (``module``): the spec delegates to it.
    """

    #: The format's name (validate's ``format``), see the module docstring.
    name: ClassVar[str]
    #: The folder under ``mcard/formats/`` (the format's name, but ``pickled`` for ``pickle``).
    folder: ClassVar[str]
    #: Registry / ``mcard size --format`` aliases -> the parameters each implies.
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: The card of the family this format's variants belong to (None: no card, no registry entry).
    card: ClassVar[CardSpec | None] = None
    #: A variant is one file of the repo (GGUF/GGML), named by ``file``; else a branch's folder.
    files_are_variants: ClassVar[bool] = False
    #: Registry keys an entry must give for this format.
    required_keys: ClassVar[tuple[str, ...]] = ()
    #: Registry keys that only this format takes (any other format refuses them).
    own_keys: ClassVar[tuple[str, ...]] = ()
    #: Other registry keys this format uses (card cells, provenance), beyond its parameters, required and
    #: own keys; with those, they are the formats column of docs/registry.md.
    registry_keys: ClassVar[tuple[str, ...]] = ()
    #: Registry defaults of the format's own keys, when the entry does not give them.
    registry_defaults: ClassVar[Mapping[str, Any]] = {}
    #: Registry parameters that must agree with what validate reads from the files (sync, package).
    compared_params: ClassVar[tuple[str, ...]] = ()
    #: File kinds (:func:`mcard.core.variant.sniff`) whose remote reads this format owns.
    file_kinds: ClassVar[tuple[str, ...]] = ()
    #: remote validate: (file-name suffix, bytes) for the first read of such a file, when more than 64 KiB.
    remote_heads: ClassVar[tuple[tuple[str, int], ...]] = ()
    #: smoke: the largest relative error of a kernel against the float32 reference (None: no smoke layers).
    kernel_tolerance: ClassVar[float | None] = None
    #: package: the weights file name a branch of this format carries (what its loaders look for).
    weights_name: ClassVar[str] = "model.safetensors"
    #: package: a quant config file the quantizer writes beside config.json, read as the packaged
    #: quantization_config's source and packaged too (GPTQ: quantize_config.json).
    quant_config_file: ClassVar[str | None] = None
    #: package: an adapter's own config, packaged instead of config.json (its weights are never sharded).
    adapter_config: ClassVar[str | None] = None

    @property
    def module(self) -> ModuleType:
        """The format's package (``mcard.formats.<folder>``): detection, checks, sizes, builders."""
        name = f"mcard.formats.{self.folder}"
        return sys.modules.get(name) or importlib.import_module(name)  # asked per registry variant: skip the import lock

    def __repr__(self) -> str:
        return f"<FormatSpec {self.name}>"

    # -- reading files ------------------------------------------------------------
    def detect(self, variant: Variant) -> bool:
        """Whether ``variant`` is in this format (cheap: configs, tensor names, magics)."""
        return bool(self.module.detect(variant))

    def check(self, variant: Variant, report: Report) -> None:
        """Fill ``report`` (format, params, config source, runtimes, predicted bytes) and add findings."""
        self.module.check(variant, report)

    @property
    def validate_reads(self) -> tuple[str, ...]:
        """Tensor-name suffixes whose values :meth:`check` reads (remote validate fetches those ranges)."""
        return tuple(getattr(self.module, "VALIDATE_READS", ()))

    def dequantize(self, variant: Variant, name: str) -> Any:
        """float32 weights of one linear / tensor; formats without a dequantizer refuse."""
        raise UnusableInput(f"no dequantizable model found ({self.name} has no dequantizer)", variant.path)

    def remote_reads(self, mirror: Any, remote_file: Any, head: bytes, scratch: Path) -> None:
        """Fetch into ``mirror`` the byte ranges of one of this format's files (of a kind in
        :attr:`file_kinds`) that :meth:`check` will read; ``head`` is the first bytes, already fetched.
        The default fetches nothing: a format that owns no file kind is never asked."""
        return None

    # -- parameters and sizes -----------------------------------------------------
    @property
    def params(self) -> Mapping[str, Param]:
        """The parameters a registry entry and ``mcard size`` may set (name -> :class:`~.params.Param`)."""
        return getattr(self.module, "PARAMS", {})

    @property
    def can_predict_size(self) -> bool:
        return bool(self.aliases) and hasattr(self.module, "predict_size")

    def predict_size(self, shape: Any, **params: Any) -> SizeEstimate:
        """The exact size of a variant of ``shape`` with ``params`` (an alias's implied ones included)."""
        if not self.can_predict_size:
            raise UnusableInput(f"{self.name}: no size prediction")
        return self.module.predict_size(shape, **params)

    def size_params(self, v: RegistryVariant) -> dict[str, Any] | None:
        """A registry variant's ``predict_size`` parameters (None: it states too little to predict)."""
        return {}

    # -- runtimes -----------------------------------------------------------------
    def rule_runtimes(self, v: RegistryVariant) -> list[Runtime] | None:
        """Which runtimes load a registry variant, by their published rules (None: no rules)."""
        return None

    # -- cards --------------------------------------------------------------------
    def file_display_name(self, file: str) -> str:
        """How a card names a variant's file (a GGUF shard set: by the set, not its first shard)."""
        return file

    def card_cells(self, v: RegistryVariant, row: Any) -> list[Any]:
        """The provided-files row of one variant, in :attr:`CardSpec.columns` order (``row``: a
        :class:`mcard.card.rows.Row`); values, made cell-safe by the caller."""
        from ..card.rows import size_cell

        return [v.branch, v.format, size_cell(row.size, row.predicted), v.description]

    # -- smoke and kernels --------------------------------------------------------
    def smoke_layers(self, variant: Variant, count: int | None, spread: Callable[..., list[str]]
                     ) -> tuple[list[Any], str]:
        """The quantized layers ``mcard smoke`` runs (:class:`mcard.smoke.layers.Layer`) and a note."""
        raise UnusableInput(f"no smoke layers for {self.name}", variant.path)

    def kernel_runs(self, v: RegistryVariant, architecture: str | None = None) -> bool:
        """Whether smoke would run a CUDA kernel for a registry variant (``architecture``: the entry's
        ``[architecture]`` as sorted JSON). Asked of :mod:`cupy_kernels.limits`."""
        return False

    # -- packaging ----------------------------------------------------------------
    def quantization_config(self, v: RegistryVariant, source: dict[str, Any] | None,
                            weights_base: str) -> dict[str, Any] | None:
        """config.json's ``quantization_config`` for a packaged variant (None: unquantized, adapters)."""
        return None

    def model_config(self, v: RegistryVariant, config: dict[str, Any]) -> dict[str, Any]:
        """The packaged config.json, once the quantization_config is set (hf: its ``torch_dtype``)."""
        return config

    def describe(self, variants: list[RegistryVariant]) -> str:
        """What a packaged commit of these variants holds, for its message."""
        return f"{variants[0].format} weights"


class PerLinearSmoke(FormatSpec):
    """A format whose quantized linears each make one smoke layer: ``quantized_linears(variant)`` in its
    package, ``layer(variant, name)`` in its folder's ``smoke.py`` (GPTQ, AWQ, bitsandbytes)."""

    def smoke_layers(self, variant: Variant, count: int | None, spread: Callable[..., list[str]]
                     ) -> tuple[list[Any], str]:
        from ..smoke.layers import by_depth

        layer = importlib.import_module(f"mcard.formats.{self.folder}.smoke").layer
        names = spread(by_depth(list(self.module.quantized_linears(variant))), count)
        return [layer(variant, n) for n in names], ""

