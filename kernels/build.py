"""Build and load qtool's CUDA extension (csrc/) with torch.utils.cpp_extension.load.

Nothing is compiled at import time. `load_extension()` builds on first use (minutes, once: the
result is cached under ~/.cache/qtool/kernels/<torch+CUDA+Python>; $QTOOL_KERNELS_CACHE overrides
the root) and returns the `torch.ops.qtool_cuda` namespace, or None with one warning when there is
no CUDA device, no CUDA build of PyTorch, no nvcc, or the build fails; every qtool op then runs
its PyTorch reference. `python -m qtool_kernels.build` builds ahead of time and prints `info()`.

Compile check on a machine without a GPU (CPU-only PyTorch, nvcc 13.0), the flags below:
  TI=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))")/include
  mkdir -p /tmp/qtool_shim/c10/cuda/impl   # the CPU wheel lacks this generated header
  printf '#pragma once\\n#define C10_CUDA_BUILD_SHARED_LIBS\\n' > /tmp/qtool_shim/c10/cuda/impl/cuda_cmake_macros.h
  for f in wo_gemv wo_stream wo_gemm wo_gemm_v3 dequant act_quant w8_gemv w1_gemv binarize w1a1 silu_mul decode_attention; do
    nvcc -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ \\
      -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \\
      -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_89,code=sm_89 \\
      -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90 -Xcompiler -fPIC \\
      -c kernels/csrc/$f.cu
  done
  g++ -std=c++20 -O3 -fPIC -D_GLIBCXX_USE_CXX11_ABI=1 -I$TI -I$TI/torch/csrc/api/include \\
    -I/usr/local/cuda/include -I/tmp/qtool_shim -Ikernels/csrc -c kernels/csrc/ops.cpp  # and ops_w8a8.cpp, ops_w1.cpp, ops_attention.cpp
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from . import fakes

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "wo_gemv.cu", "wo_planes.cu", "wo_planes_low.cu", "wo_planes_tile.cu", "wo_split.cu", "w8_planes.cu", "wo_stream.cu", "wo_gemm.cu", "wo_gemm_v3.cu", "dequant.cu", "ops_w8a8.cpp",
           "act_quant.cu", "w8_gemv.cu", "ops_w1.cpp", "w1_gemv.cu", "binarize.cu", "w1a1.cu", "silu_mul.cu",
           "decode_attention.cu", "ops_attention.cpp", "norm_planes.cu", "ops_planes.cpp")
HEADERS = ("wo_kernels.h", "planes.cuh", "wo_decode.cuh", "wo_common.cuh", "wo_xstage.cuh", "wo_occupancy.h", "wo_piece.cuh",
           "w8a8.h", "w8_decode.cuh", "mlp.h", "sm90/sm90_scaled_mm.h", "w1_kernels.h", "w1_gemv_plan.h", "pdl.cuh",
           "attention.h", "attention_two_pass.cuh", "kept_counters.h", "x_planes.cuh", "cluster_sum.cuh")
NAME = "qtool_cuda"
# The kernels need sm_80+ (bf16 mma.sync, cp.async, ldmatrix). $QTOOL_CUDA_ARCHS="90" (a build option,
# README "Build options") builds one target, a third of the compile time, where the GPU is known.
ARCHS = tuple(os.environ.get("QTOOL_CUDA_ARCHS", "80 89 90").split())
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = [
    "-O3",
    "-lineinfo",  # source lines for compute-sanitizer and Nsight, no runtime cost
    "--expt-relaxed-constexpr",
    *(f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS),
    f"-gencode=arch=compute_{ARCHS[-1]},code=compute_{ARCHS[-1]}",  # PTX for newer GPUs
    *os.environ.get("QTOOL_NVCC_EXTRA", "").split(),  # a build option for A/Bs of a compile-time switch (-D...)
]
RAW_OPS = ("wo_gemv", "wo_gemm", "wo_gemm_v3", "dequant_int", "act_quant", "w8_gemv", "sm90_scaled_mm", "w1_gemv",
           "binarize", "w1a1_gemm", "silu_mul", "decode_attention")


def host_compiler() -> str | None:
    """The C++ compiler for the host code: $QTOOL_CXX, else the `c++` on PATH, else None ($CXX or
    PyTorch's default).

    Why not $CXX first: on the H100 image (torch 2.11, 2026-11-23) CXX names a separate GCC install
    (/opt/gcc), and an extension built with it segfaulted whenever an op threw (a bad-shape call)
    instead of raising a RuntimeError; built with the system `c++` the same call raises. Exceptions
    thrown from our object code unwind through the system libstdc++ that PyTorch was linked with.
    """
    return os.environ.get("QTOOL_CXX") or shutil.which("c++")


def build_dir() -> Path:
    """Where the extension is built: one directory per torch, CUDA, Python version, target architectures
    and host compiler (so `_compile` need only compare the library's age with the sources')."""
    root = Path(os.environ.get("QTOOL_KERNELS_CACHE", "~/.cache/qtool/kernels")).expanduser()
    key = f"torch{torch.__version__}-cuda{torch.version.cuda}-py{sys.version_info.major}{sys.version_info.minor}"
    key += "-sm" + "_".join(ARCHS)
    cxx = host_compiler() or os.environ.get("CXX", "")
    key += "-cxx" + hashlib.sha1(cxx.encode()).hexdigest()[:8] if cxx else ""
    return root / re.sub(r"[^A-Za-z0-9._-]", "_", key)


def stamp() -> str:
    """What a build depends on besides the host compiler: the sources' and headers' contents, the flags and the
    exact PyTorch build. A library built elsewhere (dev/prebuild_ext.sh) is installed only where this matches."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (CSRC / name).read_bytes())
    digest.update(json.dumps([CXX_FLAGS, NVCC_FLAGS, torch.__version__, torch.version.git_version,
                              torch.version.cuda]).encode())
    return digest.hexdigest()[:20]


def install_prebuilt(folder: Path) -> str:
    """Copy a library built on another machine for this configuration (folder / qtool_cuda.so, or .so.xz, beside
    folder / qtool_cuda.stamp holding `stamp()` there) to where `load_extension` looks, newer than the sources, so
    that it loads instead of compiling; returns what was done. Another machine's system libraries may keep it from
    loading: the caller test-loads it in a child process and deletes it if that fails (dev/gpu_setup.sh)."""
    stamp_file = folder / f"{NAME}.stamp"
    packed = next((f for f in (folder / f"{NAME}.so", folder / f"{NAME}.so.xz") if f.is_file()), None)
    if packed is None or not stamp_file.is_file():
        return f"no prebuilt {NAME} in {folder}"
    if (theirs := stamp_file.read_text().strip()) != (ours := stamp()):
        return f"prebuilt {NAME} skipped: built for stamp {theirs}, this checkout and PyTorch are {ours}"
    target = build_dir() / f"{NAME}.so"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".so.partial")
    if packed.suffix == ".xz":
        import lzma

        with lzma.open(packed) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copyfile(packed, partial)
    partial.replace(target)  # its modification time is now, after every source's
    return f"prebuilt {NAME} installed at {target}"


def unavailable_reason() -> str | None:
    """Why the extension cannot be built or used here, or None when it can."""
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"the GPU is sm_{major}{minor}; the kernels need sm_80 or newer"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit)"
    return None


def _compile(directory: Path, verbose: bool) -> None:
    """Build the extension into `directory` unless the library there is newer than every source.

    In a child process: cpp_extension takes the host compiler only from $CXX, and setting it here
    would change it for everything else this process builds; the child gets it in its own environment.
    """
    library = directory / f"{NAME}.so"
    newest = max((CSRC / f).stat().st_mtime for f in SOURCES + HEADERS)
    if library.is_file() and library.stat().st_mtime > newest:
        return
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = dict(name=NAME, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=CXX_FLAGS,
                  extra_cuda_cflags=NVCC_FLAGS, extra_include_paths=[str(CSRC)], build_directory=str(directory),
                  is_python_module=False, verbose=verbose)
    code = "import json, sys; from torch.utils import cpp_extension; cpp_extension.load(**json.loads(sys.argv[1]))"
    env = dict(os.environ, **({"CXX": cxx} if (cxx := host_compiler()) else {}))
    subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env, check=True,
                   stdout=None if verbose else subprocess.DEVNULL, stderr=None if verbose else subprocess.PIPE, text=True)


def _last_line(err: Exception) -> str:
    """The useful line of a build failure: the child's last line of stderr, else the error itself."""
    stderr = getattr(err, "stderr", None) or ""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else str(err)


class _Loader:
    """Loads once per process; remembers why it could not."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tried, self.ops, self.reason = False, None, None

    def load(self, verbose: bool = False):
        if self.tried:
            return self.ops
        self.tried = True
        self.reason = unavailable_reason()
        if self.reason is None:
            directory = build_dir()
            try:
                _compile(directory, verbose)
                torch.ops.load_library(str(directory / f"{NAME}.so"))
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                self.reason = f"building {NAME} in {directory} failed: {_last_line(e)}"
            else:
                fakes.register(NAME)
                self.ops = getattr(torch.ops, NAME)
        if self.ops is None:
            warnings.warn(f"qtool CUDA kernels are not available ({self.reason}); qtool ops use their PyTorch "
                          "reference", RuntimeWarning, stacklevel=3)
        return self.ops


_loader = _Loader()


def load_extension(verbose: bool = False):
    """`torch.ops.qtool_cuda` with the kernels loaded (built on first call), or None; see module docstring."""
    return _loader.load(verbose)


def reload_switches() -> None:
    """Have the extension read wo_gemm's A/B switches (QTOOL_WO_SPLIT, QTOOL_WO_GEMM_PDL) from os.environ again,
    which it otherwise reads once per process (dev/step_ab.py's variants); a no-op where it is not loaded."""
    if _loader.ops is not None and hasattr(_loader.ops, "reload_switches"):
        _loader.ops.reload_switches()


def loaded() -> bool:
    """Whether the extension is loaded already (never builds: what code under torch.compile may ask)."""
    return _loader.ops is not None


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph, where work is recorded, not run: a layout prepared
    once and kept must not be made then (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def available_ops() -> list[str]:
    """Names of the loaded raw kernel ops (empty when the extension is not loaded)."""
    return [f"{NAME}::{op}" for op in RAW_OPS] if _loader.ops is not None else []


def switches() -> dict[str, str]:
    """The QTOOL_* environment variables this process runs with (README "Speed" lists the switches): a run's JSON
    records them, so an A/B's two sides say which was which."""
    return {name: value for name, value in sorted(os.environ.items()) if name.startswith("QTOOL_")}


def info() -> dict:
    """What was built, for which GPU and architectures, and which ops run on CUDA kernels."""
    ops = load_extension()
    cuda = torch.cuda.is_available()
    capability = "sm_{}{}".format(*torch.cuda.get_device_capability()) if cuda else None
    return {
        "available": ops is not None,
        "reason": _loader.reason,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else None,
        "capability": capability,
        "built_for": [f"sm_{a}" for a in ARCHS],
        "build_dir": str(build_dir()),
        "switches": switches(),
        "routes_measured_on": _routes_card() if cuda else None,
        "ops": available_ops(),
        "cuda_implementations": {
            # Weight-only QuantLinear layers call the qtool_cuda kernels directly (quantize/linear.py);
            # the op itself is the reference, for every layout the kernels do not take.
            "weight-only QuantLinear": _weight_only_path() if ops is not None else "reference",
            "qtool::weight_only_linear": "reference",
            # 1-bit QuantLinear layers call them directly too (quantize/linear.py, kernels/binary.py).
            "w1a16 QuantLinear": "qtool_cuda w1_gemv (8 tokens per call, m <= 32), else reference" if ops is not None else "reference",
            "w1a1 QuantLinear": "qtool_cuda binarize + w1a1_gemm (b1 mma.sync)" if ops is not None else "reference",
            "qtool::scaled_linear": _scaled_linear_path() if cuda else "reference",
            "qtool::quantize_activation": "qtool_cuda fused kernel" if ops is not None else "reference",
            "qtool::w8a8_linear": ("the measured route of tuning.W8A8 (nearest shape, next batch): qtool_cuda "
                                   "w8_gemv (m <= 32; PDL twin for static weights where tuning.gemv_pdl; gate/up "
                                   "with SiLU-and-multiply in its epilogue at m <= 8), or fused "
                                   "activation quantization + a libqtool_sm90 configuration (PDL launch to 64 "
                                   "tokens) or cuBLAS; outside the measured batches w8_gemv (m <= 16), "
                                   "then fused activation quantization + " + _scaled_linear_path())
            if ops is not None else "reference",
            # quantize/attention.py's decode attention (one query token, grouped KV heads; a compiled decode step)
            "decode attention": ("qtool_cuda decode_attention (the two-pass kernel) where attention.preferred, "
                                 "else SDPA on the packed query (QTOOL_DECODE_ATTENTION=sdpa: SDPA everywhere); "
                                 "in qtool bench the rotary and cache write too (QTOOL_ROPE_ATTENTION=0: not): in "
                                 "rope_decode_attention from batch QTOOL_ROPE_MIN_BATCH (16), as PyTorch ops before "
                                 "the kernel below it and with QTOOL_ROPE_KERNEL=0")
            if ops is not None else "SDPA on the packed query",
        },
    }


def _routes_card() -> str:
    """Whose measured routes the Hopper GEMMs take here (tuning.card): the H200's tables, and this card's cells."""
    from . import tuning

    card = tuning.card()
    if card not in tuning.CARD_TABLES:
        return f"{card} (kernels/tuning.py's tables)"
    cells = sum(len(row) for name in tuning.CARD_TABLES[card].values() for row in getattr(tuning, name).values())
    return f"{card}: the H200's tables with {cells} cells measured on the {card} over them"


def _weight_only_path() -> str:
    from . import mixed_mm, sm90  # sm90 imports this module
    from .int8_planes import (
        GEMV_PLANES,
        LOWBIT_PLANES,
        PLANES_MAX_M,
        PLANES_ONE_TOKEN_MIN_WEIGHT,
        PLANES_TILE,
        PLANES_TWO_TOKENS_MIN_N,
    )
    from .weight_only import (
        GEMM_MAX_M,
        MIXED_MIN_M,
        RING_M3_MAX_K,
        SPLIT,
        STREAM_LONG_K,
        STREAM_SMALL_MAX_N,
        V3_MAX_M,
        V3_MIN_M,
    )

    def mixed_path(bits: int) -> str:
        lib = sm90.MIXED[bits]
        return (f"CUTLASS sm90 W{bits}A16 ({lib.stem}) from {MIXED_MIN_M[bits]} tokens, {bits}-bit bf16, with the "
                "schedule (or wo_gemm, or dequant_int + cuBLAS, or for 4 bits the wgmma kernel of "
                "libqtool_sm90_wgmma where a cell names it) measured fastest at the nearest shape and batch "
                f"(tuning.py), launched with PDL to {mixed_mm.PDL_MAX_M} tokens ({mixed_mm.PDL_MAX_M_SMALL} on weights of "
                f"<= {mixed_mm.PDL_SMALL_WEIGHT} elements; QTOOL_MIXED_PDL_MAX_M)" if lib.load()
                else f"no W{bits}A16 wgmma GEMM ({lib.reason})")

    mixed = f"{mixed_path(4)}; {mixed_path(8)}"
    gemvs = ("qtool_cuda wo_gemv at 1-8 tokens (weight_only.gemv_kind: the ring GEMV at 1, with programmatic dependent "
             "launch on sm_90 unless QTOOL_PDL=0, and at 2 on 2-/3-bit weights larger than 4096 x 4096 with K < "
             f"{STREAM_LONG_K}, at 3 on 4-bit ones with K <= {RING_M3_MAX_K} < N; otherwise variant 3 from 2 tokens "
             "for 2-/3-bit (to 16 on weights of <= 4096 x 4096), 3-4 for 4-bit (to 8 on weights of <= "
             f"{STREAM_SMALL_MAX_N} rows and 32 MiB), 4 for large 8-bit ones; the ring GEMV to 4, to 8 on small 8-bit"
             + ("; 4-bit weights (groups >= 64 or per channel) at 3-4 tokens, at 2 where N > "
                f"{PLANES_TWO_TOKENS_MIN_N - 1}, at 1 on weights of more than {PLANES_ONE_TOKEN_MIN_WEIGHT - 1} elements, on x_planes + wo_planes_gemv (x as two int8 planes on the "
                "int8 tensor cores, int8_planes.planes_route; QTOOL_GEMV_PLANES=0: off)"
                + (f", symmetric ones at 5-{PLANES_TILE} tokens too (two or four n-tiles of the mma per weight "
                   "fragment; QTOOL_PLANES_TILE)" if PLANES_TILE > PLANES_MAX_M else "") if GEMV_PLANES else "")
             + ("; symmetric 2-/3-bit weights (groups >= 64 or per channel) by the same rule on x_planes + "
                "wo_planes_gemv (int8_planes.lowbit_planes_route; QTOOL_LOWBIT_PLANES=0: off)" if LOWBIT_PLANES else "")
             + "; symmetric 4-bit weights of K <= 4096 and N <= 6144 (N <= 14336 to 12 tokens; N <= 16384 where K <= "
               "2048) or N <= 4096 and K <= 14336 (at least 2048 x 2048) at 9-16 tokens on sm_90 on wo_gemv's split "
               "variant (x's planes made per K slice, split-K over a cluster; int8_planes.takes_split, "
               "QTOOL_SPLIT_GEMV), unless a measured cell names the wgmma kernel there (weight_only._wgmma_cell)"
             + ")")
    rows = ("8-bit symmetric per-channel layers row-major on qtool_cuda w8_gemv (to 4 tokens, 16 on weights of <= "
            "8192 x 8192, 32 on <= 4096 x 6144: weight_only.rows_gemv), then the Hopper copy's route"
            + (f" (two int8 planes of the activations on the int8 GEMM at {SPLIT[0]}-{SPLIT[1]} tokens on weights "
               f"of <= {SPLIT[2]} elements first: split_mm.py, QTOOL_ROWS_SPLIT)" if SPLIT[0] <= SPLIT[1] and
               SPLIT[1] > 0 else ""))
    return (f"{rows}; {gemvs}; {mixed}; otherwise wo_gemm_v3 ({V3_MIN_M}-{V3_MAX_M} tokens; "
            f"wo_gemm before sm_90), wo_gemm (m <= {GEMM_MAX_M}); dequant_int + cuBLAS; 2-3-bit layers at their "
            "own width in the GEMVs to 8 tokens, then the 4-bit Hopper copy or dequant_int + cuBLAS; groups of 16: "
            "on the 4-bit kernels); "
            "5-7-bit on the 8-bit ones (codes widened when packed)")


def _scaled_linear_path() -> str:
    from . import sm90  # imports this module

    hopper = "CUTLASS sm90 (libqtool_sm90)" if sm90.load() else f"no CUTLASS sm90 GEMM ({sm90.reason()})"
    block = ("F.scaled_mm block-wise, or CUTLASS sm90 block-wise (libqtool_sm90_block) where tuning.W8A8 measured "
             "it faster" if sm90.block.load() else f"F.scaled_mm block-wise (no libqtool_sm90_block: {sm90.block.reason})")
    return f"{hopper}; torch._scaled_mm / torch._int_mm; {block}"


def build(verbose: bool = True) -> dict:
    """Build (or load the cached build) now; raises RuntimeError when the extension cannot be used."""
    if load_extension(verbose) is None:
        raise RuntimeError(f"qtool CUDA kernels could not be built: {_loader.reason}")
    return info()


if __name__ == "__main__":
    # Use the package's copy of this module, so the loader state is the one every qtool op sees.
    import importlib

    print(json.dumps(importlib.import_module(f"{__spec__.parent}.build").build(), indent=2))
