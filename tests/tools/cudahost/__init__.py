"""Run the CUDA C kernels of ``cupy_kernels/`` on the CPU, from their own source.

``HostModule`` stands in for ``cupy.RawModule``: it compiles the ``.cu`` text with
g++ as C++17 against ``runtime.h`` (fibers for CUDA threads, a scheduler that
completes ``__syncthreads`` and warp shuffles the way the hardware does, see the
header) and ``cuda_fp16.h`` from this folder, with UBSan on. ``get_function``
returns a ``HostKernel`` that takes CuPy's ``fn(grid, block, args)`` call.

A launch copies every pointer argument into its own guarded buffer (16-byte
aligned start, an inaccessible page after the end, ``const`` parameters
read-only), runs the grid in a forked child once per thread order in
``HostKernel.orders`` and demands bit-identical outputs across the orders, then
copies the outputs back. Each problem ends the launch with :class:`KernelFault`
and one line saying what happened, in the kernel's terms: an argument whose type
differs from the C parameter (CuPy would pass its bytes unchecked), a load or
store past the end of a named buffer, a store into a ``const`` input, barrier or
shuffle divergence, a deadlock or endless loop, an UBSan report (misaligned
vector load, shared-array index out of range, bad shift), output that depends on
the thread order (a data race).

:func:`fake_cupy` returns a module that the launcher in ``cupy_kernels.launch``
can import as ``cupy``: numpy arrays are the device arrays and ``RawModule`` is
:class:`HostModule`, so the launcher code runs unchanged.

What this cannot show: timing, occupancy, register pressure, anything about the
memory system, and races finer than the phases between synchronisation points
(a fiber runs from one sync point to the next without interruption).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CXX = shutil.which("g++")
# -fno-gnu-unique: a template's __shared__ static would otherwise be one process-wide object shared by every
# kernel library loaded (the first one's), not the copy the library registers as its shared memory.
FLAGS = ("-std=c++17", "-O1", "-fPIC", "-fsanitize=undefined", "-fno-sanitize-recover=all", "-U_FORTIFY_SOURCE",
         "-fno-strict-aliasing", "-fno-gnu-unique", "-w")
CACHE = Path(tempfile.gettempdir()) / "mcard-cudahost"
PAGE = 4096

# C parameter types -> numpy dtype of the array (pointers) or the numpy scalar type CuPy needs (values)
POINTER_DTYPES = {"half": np.float16, "__half": np.float16, "float": np.float32, "double": np.float64,
                  "int": np.int32, "unsigned int": np.uint32, "unsigned": np.uint32, "unsigned char": np.uint8,
                  "signed char": np.int8, "char": np.int8, "short": np.int16, "unsigned short": np.uint16,
                  "long long": np.int64, "unsigned long long": np.uint64}
SCALAR_TYPES = {"int": (np.int32, ctypes.c_int32), "unsigned int": (np.uint32, ctypes.c_uint32),
                "unsigned": (np.uint32, ctypes.c_uint32), "long long": (np.int64, ctypes.c_int64),
                "unsigned long long": (np.uint64, ctypes.c_uint64), "float": (np.float32, ctypes.c_float),
                "double": (np.float64, ctypes.c_double)}
LAUNCH_RC = {1: "broke a CUDA rule", 2: "faulted", 3: "hung", 4: "was stopped by UBSan"}


class KernelFault(RuntimeError):
    """A launch on the host runtime went wrong; the message says how, in the kernel's terms."""


@functools.cache
def available() -> tuple[bool, str]:
    """(usable, reason): the host runtime needs fork() and a g++ that links UBSan into a shared library."""
    if CXX is None:
        return False, "g++ is not on PATH"
    if not hasattr(os, "fork"):
        return False, "needs fork()"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int probe(int a, int b) { return a << b; }\n")
        done = subprocess.run([CXX, *FLAGS, "-shared", str(src), "-o", str(Path(tmp) / "probe.so")],
                              capture_output=True, text=True)
    if done.returncode:
        return False, f"g++ cannot build with {' '.join(FLAGS)}: {done.stderr.strip()[-200:]}"
    return True, ""


@dataclass(frozen=True)
class Param:
    """One kernel parameter as declared in the .cu source."""

    name: str
    ctype: str  # element type for pointers, value type otherwise, without const / __restrict__
    pointer: bool
    const: bool
    volatile: bool = False

    @property
    def c_decl(self) -> str:
        quals = ("const " if self.const else "") + ("volatile " if self.volatile else "")
        return f"{quals}{self.ctype}{'*' if self.pointer else ''}"


def _parse_param(text: str) -> Param:
    text = " ".join(text.replace("*", " * ").split())
    words = [w for w in text.split() if w not in ("__restrict__", "__restrict")]
    name, rest = words[-1], words[:-1]
    pointer = "*" in rest
    const = pointer and "const" in rest[: rest.index("*")]
    volatile = pointer and "volatile" in rest[: rest.index("*")]
    ctype = " ".join(w for w in rest if w not in ("const", "volatile", "*"))
    return Param(name, ctype, pointer, const, volatile)


def _run(cmd: Sequence[str]) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True)
    if done.returncode:
        raise KernelFault(f"host compile failed: {' '.join(cmd[:3])} ...\n{done.stderr[-4000:]}")
    return done.stdout


def signatures(cu_path: Path) -> dict[str, list[Param]]:
    """The ``extern "C" __global__`` kernels of a .cu file and their parameters (after the preprocessor)."""
    text = _run([CXX, "-E", "-P", "-DCCH_SCAN", "-std=c++17", "-I", str(HERE), "-include", str(HERE / "runtime.h"),
                 "-x", "c++", str(cu_path)])
    found = {}
    for m in re.finditer(r'extern\s+"C"\s+__cch_kernel__\s+void\s+(\w+)\s*\(([^)]*)\)', text):
        params = [p for p in m.group(2).split(",") if p.strip()]
        found[m.group(1)] = [_parse_param(p) for p in params]
    return found


class HostModule:
    """``cupy.RawModule`` on the CPU: ``HostModule(code=...)`` or ``HostModule(path=...)``."""

    def __init__(self, code: str | None = None, path: str | os.PathLike | None = None, options: Sequence[str] = (),
                 **_: Any):
        ok, why = available()
        if not ok:
            raise KernelFault(f"host runtime unavailable: {why}")
        if code is None:
            code = Path(path).read_text(encoding="utf-8")  # type: ignore[arg-type]
        runtime = (HERE / "runtime.h").read_bytes() + (HERE / "cuda_fp16.h").read_bytes()
        key = hashlib.sha256(code.encode() + runtime + " ".join(FLAGS).encode()).hexdigest()[:20]
        CACHE.mkdir(parents=True, exist_ok=True)
        cu = CACHE / f"{key}.cu"
        lib = CACHE / f"{key}.so"
        if not cu.exists():
            _atomic_write(cu, code.encode())
        self.kernels = signatures(cu)
        if not lib.exists():
            wrappers = [f'#include "{cu}"']
            for name, params in self.kernels.items():
                call = ", ".join(f"*({p.c_decl}*)a[{i}]" for i, p in enumerate(params))
                wrappers.append(f'extern "C" void cch_entry_{name}(void** a) {{ {name}({call}); }}')
            src = CACHE / f"{key}.entry.cpp"
            _atomic_write(src, "\n".join(wrappers).encode() + b"\n")
            tmp = lib.with_suffix(f".{os.getpid()}.so")
            _run([CXX, *FLAGS, "-shared", "-I", str(HERE), "-include", str(HERE / "runtime.h"), str(src), "-o",
                  str(tmp)])
            os.replace(tmp, lib)
        os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.lib = ctypes.CDLL(str(lib))
        self._register_shared(lib)
        self.lib.cch_alloc.restype = ctypes.c_void_p
        self.lib.cch_alloc.argtypes = [ctypes.c_size_t]
        self.lib.cch_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.lib.cch_protect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cch_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint),
                                        ctypes.POINTER(ctypes.c_uint), ctypes.c_int, ctypes.c_double,
                                        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                        ctypes.POINTER(ctypes.c_ulonglong)]
        self._functions: dict[str, HostKernel] = {}

    def _register_shared(self, lib: Path) -> None:
        """Tell the runtime where the kernels' ``__shared__`` variables are.

        ``__shared__`` becomes a function-local static (runtime.h); g++ ignores a section
        attribute on those inside templates, so they are found by name instead: every
        defined function-local static (``_ZZ...``) outside the runtime's own namespace.
        """
        listing = _run(["nm", "-S", "--defined-only", str(lib)])
        offsets, sizes, base = [], [], None
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "cch_alloc":
                base = ctypes.cast(self.lib.cch_alloc, ctypes.c_void_p).value - int(parts[0], 16)
            if (len(parts) == 4 and parts[2] in ("b", "B", "d", "D", "u", "V", "v") and parts[3].startswith("_ZZ")
                    and not parts[3].startswith("_ZZN3cch")):
                offsets.append(int(parts[0], 16))
                sizes.append(int(parts[1], 16))
        if base is None:
            listing_t = [ln for ln in listing.splitlines() if ln.endswith(" cch_alloc")]
            if not listing_t:
                raise KernelFault("host runtime: cch_alloc not found in the kernel library")
            base = ctypes.cast(self.lib.cch_alloc, ctypes.c_void_p).value - int(listing_t[0].split()[0], 16)
        n = len(offsets)
        addr = (ctypes.c_ulonglong * max(n, 1))(*[base + o for o in offsets])
        size = (ctypes.c_ulonglong * max(n, 1))(*sizes)
        self.lib.cch_set_shared(addr, size, n)

    def get_function(self, name: str) -> HostKernel:
        if name not in self.kernels:
            raise KernelFault(f"no extern \"C\" __global__ function {name!r} (have {sorted(self.kernels)})")
        return self._functions.setdefault(name, HostKernel(self, name, self.kernels[name]))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _Buffer:
    """A guarded copy of one array argument (see ``cch_alloc`` in runtime.h)."""

    def __init__(self, lib: ctypes.CDLL, array: np.ndarray, param: Param):
        self.lib, self.array, self.param = lib, array, param
        self.nbytes = max(int(array.nbytes), 1)
        addr = lib.cch_alloc(self.nbytes)
        if not addr:
            raise MemoryError(f"cannot map {self.nbytes} bytes for {param.name}")
        self.addr = int(addr)
        self.view = np.ctypeslib.as_array((ctypes.c_ubyte * self.nbytes).from_address(self.addr))
        self.original = array.reshape(-1).view(np.uint8).copy()
        self.reset()
        if param.const:
            lib.cch_protect(self.addr, self.nbytes, 1)

    def reset(self) -> None:
        self.view[: self.original.size] = self.original

    def contents(self) -> bytes:
        return self.view[: self.original.size].tobytes()

    def copy_back(self) -> None:
        self.array.reshape(-1).view(np.uint8)[:] = self.view[: self.original.size]

    def free(self) -> None:
        if self.param.const:
            self.lib.cch_protect(self.addr, self.nbytes, 0)
        self.lib.cch_free(self.addr, self.nbytes)

    def explain(self, addr: int) -> str | None:
        end = self.addr + self.original.size
        padded_end = self.addr + (self.nbytes + 15) // 16 * 16
        if self.addr <= addr < end and self.param.const:
            return f"stored into the const input `{self.param.name}` at byte {addr - self.addr}"
        if end <= addr < padded_end + PAGE:
            return f"accessed byte {addr - self.addr} of `{self.param.name}`, which has {self.original.size} bytes"
        if self.addr - PAGE <= addr < self.addr:
            return f"accessed {self.addr - addr} bytes before the start of `{self.param.name}`"
        return None


class HostKernel:
    """``cupy.RawKernel`` on the CPU: ``kernel(grid, block, args)``."""

    orders: tuple[int, ...] = (0, 1)  # forward and reverse thread order; >= 2 are seeded shuffles
    timeout_s: float = 120.0

    def __init__(self, module: HostModule, name: str, params: list[Param]):
        self.module, self.name, self.params = module, name, params
        self.entry = ctypes.cast(getattr(module.lib, f"cch_entry_{name}"), ctypes.c_void_p)
        self.launches = 0

    def __call__(self, grid: Sequence[int] | int, block: Sequence[int] | int, args: Sequence[Any],
                 shared_mem: int = 0, **_: Any) -> None:
        g, b = _dims(grid), _dims(block)
        if len(args) != len(self.params):
            raise KernelFault(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        buffers: list[_Buffer] = []
        holders: list[Any] = []
        try:
            for p, a in zip(self.params, args, strict=True):
                if p.pointer:
                    buffers.append(_Buffer(self.module.lib, self._array(p, a), p))
                    holders.append(ctypes.c_void_p(buffers[-1].addr))
                else:
                    holders.append(self._scalar(p, a))
            argv = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
            outputs = [buf for buf in buffers if not buf.param.const]
            first: list[bytes] | None = None
            for order in self.orders:
                for buf in outputs:
                    buf.reset()
                self._launch(argv, g, b, order, buffers)
                got = [buf.contents() for buf in outputs]
                if first is None:
                    first = got
                elif got != first:
                    diff = [buf.param.name for buf, x, y in zip(outputs, first, got, strict=True) if x != y]
                    raise KernelFault(f"{self.name}: `{', '.join(diff)}` differ between thread orders {self.orders[0]} "
                                      f"and {order} (a data race: a missing __syncthreads or a shared word written "
                                      "by two threads)")
            for buf in outputs:
                buf.copy_back()
            self.launches += 1
        finally:
            for buf in buffers:
                buf.free()

    def _array(self, p: Param, a: Any) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise KernelFault(f"{self.name}: `{p.name}` ({p.c_decl}) got {type(a).__name__}, not an array")
        want = POINTER_DTYPES.get(p.ctype)
        if want is None or a.dtype != np.dtype(want):
            raise KernelFault(f"{self.name}: `{p.name}` is {p.c_decl} but the array is {a.dtype}")
        if not a.flags.c_contiguous:
            raise KernelFault(f"{self.name}: `{p.name}` is not C-contiguous")
        return a

    def _scalar(self, p: Param, a: Any) -> Any:
        if p.ctype not in SCALAR_TYPES:
            raise KernelFault(f"{self.name}: no host mapping for the C type {p.ctype} of `{p.name}`")
        np_type, c_type = SCALAR_TYPES[p.ctype]
        if type(a) is not np_type:
            raise KernelFault(f"{self.name}: `{p.name}` is C {p.ctype} but got {type(a).__name__}; CuPy passes the "
                              f"value's own bytes, so it must be {np_type.__name__}")
        return c_type(a.item())

    def _launch(self, argv: Any, g: tuple[int, int, int], b: tuple[int, int, int], order: int,
                buffers: list[_Buffer]) -> None:
        message = ctypes.create_string_buffer(1024)
        fault = ctypes.c_ulonglong(0)
        with tempfile.NamedTemporaryFile(prefix="cudahost-", suffix=".log") as log:
            rc = self.module.lib.cch_launch(self.entry, argv, (ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), order,
                                            self.timeout_s, log.name.encode(), message, 1024, ctypes.byref(fault))
            report = Path(log.name).read_text(errors="replace")
        if rc == 0:
            return
        what = message.value.decode(errors="replace")
        if rc == 2:
            what = next((x for x in (buf.explain(fault.value) for buf in buffers) if x),
                        f"accessed 0x{fault.value:x}, in no argument buffer (a wild pointer or a stack overflow)")
        if rc == 4:
            lines = [ln for ln in report.splitlines() if "runtime error" in ln] or report.splitlines()[-3:]
            what = f"{what}: {' | '.join(lines)[:800]}"
        raise KernelFault(f"{self.name} grid {g} block {b} order {order} {LAUNCH_RC.get(rc, 'failed')}: {what}")


def _dims(v: Sequence[int] | int) -> tuple[int, int, int]:
    t = (int(v),) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)
    if not 1 <= len(t) <= 3:
        raise KernelFault(f"grid/block must have 1 to 3 dimensions, got {t}")
    return (t + (1, 1))[:3]


class _Event:
    """``cupy.cuda.Event`` on the host: wall-clock time of the (synchronous) launches between two records."""

    def __init__(self, *_: Any, **__: Any):
        self.t = 0.0

    def record(self, *_: Any) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def fake_cupy() -> types.ModuleType:
    """A ``cupy`` module whose arrays are numpy arrays and whose ``RawModule`` is :class:`HostModule`.

    Enough of CuPy for ``cupy_kernels.launch``, ``mcard.smoke.run`` and the kernel tests:
    array constructors, ``asnumpy``, ``RawModule``, ``cuda.Device``, ``cuda.Event`` /
    ``cuda.get_elapsed_time`` (host wall-clock milliseconds) and a device called
    "cudahost (CPU)".
    """
    cp = types.ModuleType("cupy")
    for attr in ("float16", "float32", "int32", "int64", "uint8", "uint16", "uint32", "nan", "zeros", "zeros_like",
                 "ones", "empty", "empty_like", "full", "arange", "asarray", "ascontiguousarray", "concatenate",
                 "stack", "take"):
        setattr(cp, attr, getattr(np, attr))
    cp.asnumpy = np.asarray
    cp.RawModule = HostModule
    device = types.SimpleNamespace(id=0, synchronize=lambda: None)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                    getDeviceProperties=lambda _id: {"name": b"cudahost (CPU)"})
    cp.cuda = types.SimpleNamespace(Device=lambda *a: device, runtime=runtime, Event=_Event,
                                    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
    return cp
