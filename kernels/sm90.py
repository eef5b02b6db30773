"""Build and load the Hopper GEMM libraries on CUTLASS 3.x (csrc/sm90/):

  libqtool_sm90        scaled_mm_sm90.cu  W8A8 (int8 / FP8) GEMM; `torch.ops.qtool_cuda.sm90_scaled_mm`
                                          (ops_w8a8.cpp) finds its C entry point by name
  libqtool_sm90_mixed  mixed_mm_sm90.cu   W4A16 GEMM (int4 weights dequantized in registers);
                                          kernels/mixed_mm.py calls it through ctypes
  libqtool_sm90_mixed8 mixed_mm_sm90.cu   the same for int8 weights (W8A16), compiled with
                                          QTOOL_MIXED_BITS=8
  libqtool_sm90_block  block_mm_sm90.cu   FP8 GEMM with 1 x 128 activation and 128 x 128 weight-block
                                          scales (fp8-block); kernels/block_mm.py calls it through ctypes
  libqtool_sm90_wgmma  wo_wgmma_sm90.cu   W4A16 (the kernel layout) and 8-bit rows (int8 / E4M3) with 16-bit
                                          activations at 9-128 tokens on wgmma, no CUTLASS;
                                          kernels/warpgroup_mm.py calls it through ctypes

Each is a plain shared library with a C entry point, compiled by nvcc for sm_90a and loaded with
ctypes (RTLD_GLOBAL for libqtool_sm90, whose entry point ops_w8a8.cpp looks up by name; the others
are called through ctypes handles and loaded RTLD_LOCAL: the two mixed libraries export the same names). Kept apart from the PyTorch extension because they need the CUTLASS headers
and a Hopper GPU, and take a minute or more to compile: without them everything else still builds,
W8A8 layers use torch._scaled_mm / torch._int_mm and W4A16 layers qtool's mma.sync GEMM.

CUTLASS headers: $QTOOL_CUTLASS_INCLUDE, else the `nvidia-cutlass` package (headers only are used:
`pip install --no-deps nvidia-cutlass`). The result is cached beside the extension's build
(build.build_dir()), named by a hash of the sources and flags, so a prebuilt copy is reused.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import build

SOURCE = build.CSRC / "sm90" / "scaled_mm_sm90.cu"
HEADER = build.CSRC / "sm90" / "sm90_scaled_mm.h"
COMMON = (build.CSRC / "sm90" / "sm90_common.cuh",  # included by every library's source
          build.CSRC / "sm90" / "sm90_scheduler.cuh", build.CSRC / "sm90" / "sm90_prefetch.cuh",
          build.CSRC / "kept_counters.h")
# Hidden visibility: only the C entry points (QTOOL_SM90_API) are exported, so one library's copies of CUTLASS's
# inline host functions never serve another's calls (sm90_scaled_mm.h says what that broke).
# CUTLASS_ENABLE_GDC_FOR_SM90: the kernels carry the grid-dependency waits that QTOOL_GEMM_PDL=1 launches use.
FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-lineinfo", "-DCUTLASS_ENABLE_GDC_FOR_SM90",
         "-gencode=arch=compute_90a,code=sm_90a", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-shared"]


def cutlass_include() -> Path | None:
    """The CUTLASS include directory, or None when neither the variable nor the package gives one."""
    if os.environ.get("QTOOL_CUTLASS_INCLUDE"):
        return Path(os.environ["QTOOL_CUTLASS_INCLUDE"])
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        return None
    include = Path(spec.origin).parent / "source" / "include"
    return include if (include / "cutlass" / "cutlass.h").is_file() else None


class Library:
    """One of the libraries above: builds and loads once per process; remembers why it could not."""

    def __init__(self, stem: str, source: Path, header: Path | tuple[Path, ...], what: str, fallback: str,
                 defines: tuple[str, ...] = (), global_symbols: bool = True, cutlass: bool = True) -> None:
        self.stem, self.source, self.what, self.fallback = stem, source, what, fallback
        self.cutlass = cutlass  # whether the source includes CUTLASS's headers
        own = header if isinstance(header, tuple) else (header,)
        self.headers = (*own, *COMMON)  # what the source includes from csrc/sm90, hashed with it
        self.defines, self.mode = list(defines), ctypes.RTLD_GLOBAL if global_symbols else ctypes.RTLD_LOCAL
        self.tried, self.loaded, self.reason = False, False, None

    def path(self) -> Path:
        """Cached beside the extension's build, named by a hash of the sources and flags."""
        digest = hashlib.sha1(self.source.read_bytes() + b"".join(h.read_bytes() for h in self.headers)
                              + " ".join(FLAGS + self.defines).encode()).hexdigest()[:12]
        return build.build_dir() / f"{self.stem}-{digest}.so"

    def _unavailable(self) -> str | None:
        if build.load_extension() is None:
            return "the qtool CUDA extension is not available"
        if torch.cuda.get_device_capability() != (9, 0):
            return "the GPU is not a Hopper (sm_90)"
        if self.cutlass and cutlass_include() is None and not self.path().is_file():
            return "CUTLASS headers not found (pip install --no-deps nvidia-cutlass, or set QTOOL_CUTLASS_INCLUDE)"
        return None

    def load(self) -> bool:
        if self.tried:
            return self.loaded
        self.tried = True
        self.reason = self._unavailable()
        if self.reason is None:
            path = self.path()
            try:
                if not path.is_file():
                    self._compile(path)
                ctypes.CDLL(str(path), mode=self.mode)
                self.loaded = True
            except (OSError, subprocess.CalledProcessError) as e:
                self.reason = f"building or loading {path.name} failed: {e}"
        if not self.loaded:
            warnings.warn(f"qtool's Hopper {self.what} is not available ({self.reason}); {self.fallback}",
                          RuntimeWarning, stacklevel=3)
        return self.loaded

    def _compile(self, path: Path) -> None:
        from torch.utils.cpp_extension import CUDA_HOME

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        includes = []
        if self.cutlass:
            include = cutlass_include()
            util = include.parent / "tools" / "util" / "include"  # cutlass/util/*.hpp, beside the package's headers
            includes = [f"-I{include}", f"-I{util}"]
        cmd = [str(Path(CUDA_HOME) / "bin" / "nvcc"), *FLAGS, *self.defines, *includes,
               f"-I{self.source.parent}", str(self.source), "-o", str(tmp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise subprocess.CalledProcessError(result.returncode, cmd[0], stderr=result.stderr[-2000:])
        tmp.replace(path)  # atomic: a concurrent process never loads half a library


_sm90 = Library("libqtool_sm90", SOURCE, HEADER, "W8A8 GEMM", "W8A8 layers use torch._scaled_mm / torch._int_mm")
_MIXED_SOURCES = (build.CSRC / "sm90" / "mixed_mm_sm90.cu", build.CSRC / "sm90" / "sm90_mixed_mm.h")
mixed = Library("libqtool_sm90_mixed", *_MIXED_SOURCES, "W4A16 GEMM", "W4A16 layers use qtool's mma.sync GEMM",
                ("-DQTOOL_MIXED_BITS=4",), global_symbols=False)
mixed8 = Library("libqtool_sm90_mixed8", *_MIXED_SOURCES, "W8A16 GEMM", "W8A16 layers use qtool's mma.sync GEMM",
                 ("-DQTOOL_MIXED_BITS=8",), global_symbols=False)
MIXED = {4: mixed, 8: mixed8}  # code width -> library
block = Library("libqtool_sm90_block", build.CSRC / "sm90" / "block_mm_sm90.cu",
                (build.CSRC / "sm90" / "sm90_block_mm.h", build.CSRC / "sm90" / "sm90_block_overlap.cuh"),
                "FP8 block GEMM", "fp8-block layers use F.scaled_mm block-wise", global_symbols=False)
wgmma = Library("libqtool_sm90_wgmma", build.CSRC / "sm90" / "wo_wgmma_sm90.cu",
                tuple(build.CSRC / "sm90" / f"wgmma_{part}.cuh"
                      for part in ("ops", "async", "weights", "lanes", "groups", "consumer"))
                + (build.CSRC / "pdl.cuh",), "weight-only wgmma GEMM",
                "W4A16 / 8-bit layers at 9-128 tokens take the other routes", global_symbols=False, cutlass=False)
ALL = (_sm90, mixed, mixed8, block, wgmma)  # what `qtool kernels build` and dev/prebuild_sm90.sh compile


# A CUTLASS library's nvcc (cicc) takes several GB: two at once swapped a 24 GB machine (dev/prebuild_sm90.sh).
COMPILE_GB = 12


def build_jobs(missing: int, cpus: int | None, available_gb: float | None) -> int:
    """How many libraries to compile at once: one per missing library, at most one per core and per COMPILE_GB of
    available memory (unknown memory: one at a time), at least one."""
    by_memory = 1 if available_gb is None else int(available_gb // COMPILE_GB)
    return max(1, min(missing, cpus or 1, by_memory))


def _available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return None


def build_all(jobs: int | None = None) -> dict[str, str]:
    """Compile every library of ALL not yet in the cache, several at once (`build_jobs`), so none is compiled
    later in the middle of a first call. {library stem: "cached", "built" or why it was not}. Needs what loading
    needs (the extension, a Hopper GPU, the CUTLASS headers)."""
    status: dict[str, str] = {}
    todo = []
    for lib in ALL:
        why = lib._unavailable()
        if why is not None:
            status[lib.stem] = f"skipped: {why}"
        elif lib.path().is_file():
            status[lib.stem] = "cached"
        else:
            todo.append(lib)

    def compile_one(lib: Library) -> tuple[str, str]:
        try:
            lib._compile(lib.path())
            return lib.stem, "built"
        except (OSError, subprocess.CalledProcessError) as e:
            return lib.stem, f"failed: {getattr(e, 'stderr', None) or e}"

    if todo:
        workers = jobs or build_jobs(len(todo), os.cpu_count(), _available_gb())
        with ThreadPoolExecutor(max_workers=workers) as pool:  # each thread waits on its own nvcc process
            status.update(pool.map(compile_one, todo))
    return status


def call(workspace_of, run, args: ctypes.Structure, device: torch.device) -> str | None:
    """Run a library's GEMM entry point `run` on `args` (a ctypes struct with workspace / workspace_bytes fields)
    with the workspace `workspace_of` asks for, on the current stream; the library's error text, or None."""
    need = workspace_of(ctypes.byref(args))
    workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=device)  # stream-ordered: freed after the GEMM
    args.workspace, args.workspace_bytes = workspace.data_ptr(), need
    err = run(ctypes.byref(args), torch.cuda.current_stream(device).cuda_stream)
    return None if err is None else err.decode()


def library_path() -> Path:
    return _sm90.path()


def load() -> bool:
    """Whether torch.ops.qtool_cuda.sm90_scaled_mm can run (builds libqtool_sm90 on first call)."""
    return _sm90.load()


def reason() -> str | None:
    return _sm90.reason


RASTERS = {"heuristic": 0, "m": 1, "n": 2}  # csrc/sm90/sm90_common.cuh, TileOrder::raster


def set_tile_order(swizzle: int = 1, raster: str = "heuristic") -> None:
    """The order in which every loaded library's persistent schedulers hand out output tiles, from the next call on
    (csrc/sm90/sm90_common.cuh, TileOrder; QTOOL_GEMM_SWIZZLE / QTOOL_GEMM_RASTER set it at load): `swizzle` tiles
    (1, 2, 4 or 8) per group, walked along m or n first ("m", "n", or "heuristic": CUTLASS's choice). A CUDA graph
    keeps the order it was captured with. For A/Bs (dev/order_ab.py); the defaults are CUTLASS's."""
    if swizzle not in (1, 2, 4, 8):
        raise ValueError(f"set_tile_order: swizzle={swizzle!r}, expected 1, 2, 4 or 8")
    if raster not in RASTERS:
        raise ValueError(f"set_tile_order: raster={raster!r}, expected one of {sorted(RASTERS)}")
    for lib in ALL:
        if lib.loaded:  # a handle of its own: the two mixed libraries export the same name
            setter = ctypes.CDLL(str(lib.path())).qtool_sm90_set_tile_order
            setter.restype = ctypes.c_char_p
            err = setter(swizzle, RASTERS[raster])
            if err is not None:
                raise RuntimeError(f"{lib.stem}: {err.decode()}")


PREFETCH_MAX = 1 << 30  # bytes; a cap past a CTA's whole unit prefetches the unit


def set_prefetch(nbytes: int = 0) -> None:
    """Bytes of weights each CTA of every loaded library's GEMMs prefetches into L2 from its prologue, before its
    first load and before it waits on the kernel before it under PDL (csrc/sm90/sm90_prefetch.cuh; QTOOL_GEMM_PREFETCH
    sets it at load), from the next call on; 0 turns it off. It moves no result bit. For A/Bs (dev/route_probe.py
    --prefetch); off by default: session 46 measured the W4 GEMM slower at every cap. A CUDA graph keeps the setting
    it was captured with."""
    if not isinstance(nbytes, int) or not 0 <= nbytes <= PREFETCH_MAX:
        raise ValueError(f"set_prefetch: nbytes={nbytes!r}, expected an int in [0, {PREFETCH_MAX}]")
    for lib in ALL:
        if lib.loaded:  # a handle of its own: the libraries export the same name
            ctypes.CDLL(str(lib.path())).qtool_sm90_set_prefetch(ctypes.c_uint32(nbytes))


# Added to a configuration of either W8A8 library (csrc/sm90/sm90_common.cuh, kConfigSwizzle8 / kConfigAlongN): the
# order in which that call's persistent scheduler hands out tiles, "s8" a swizzle of 8 along CUTLASS's side, "n8" a
# swizzle of 8 along n. Session 43 (dev/order_ab.py, one process): at 8192 tokens 4-19% faster on most shapes, at
# 1024 up to 2x slower; so an order is part of a measured route ("pingpong-s8"), for the tiles of thousands of tokens.
ORDERS = {"s8": 32, "n8": 96}
ORDER_BITS = 96
# CUTLASS rounds the tile grid up to swizzle x cluster tiles in both dimensions (tile_scheduler_params.h), and the
# persistent CTAs run the padding as tiles of zeros. Bounded for every tile the routes order: 128 rows / columns or
# more, swizzle 8, clusters of at most 2.
ORDER_PAD = 128 * 8 * 2


def without_padded_order(config: int, m: int, n: int) -> int:
    """`config` without its tile-order bits where the rounding above would add more than 1/16 to the work of an
    m x n output: a route measured at 2048 tokens also serves 1025-2047, where 9-15 tiles of 128 rows would become
    16 (session 43: a swizzle of 8 at 1024 tokens ran ~2x slower)."""
    if not config & ORDER_BITS:
        return config
    for extent in (m, n):
        tiles, padded = -(-extent // 128), -(-extent // ORDER_PAD) * (ORDER_PAD // 128)
        if padded * 16 > tiles * 17:
            return config & ~ORDER_BITS
    return config
