"""Instruction mix of a kernel's inner loops, from the sm_90 SASS: what session 17 used to find the 1-bit kernels'
waste (a shift and two LOP3 per decoded register, cp.async address arithmetic per stage, reloaded epilogue terms)
without a GPU. Compiles kernels/csrc/FILE.cu to a cubin with the extension's flags, disassembles it with
cuobjdump (the `nvidia-cuda-cuobjdump` and `nvidia-cuda-nvdisasm` wheels, fetched into /tmp when missing), and
prints, per kernel whose mangled name contains FILTER, the backward-branch loops that hold tensor-core
instructions: their length, instructions per mma and the most frequent opcodes.

    python3 dev/sass_audit.py w1_gemv "bfloat16Li4ELb1E"
    python3 dev/sass_audit.py w8_gemv "CodeFormatE0ELi1ELb0ELi1ELi8E" --epilogue
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path("/tmp/qtool_sass_tools")
FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
         "-gencode=arch=compute_90,code=sm_90"]
MMA = ("HMMA", "BMMA", "IMMA", "HGMMA")


def cuobjdump() -> str:
    """The cuobjdump binary, with nvdisasm beside it on PATH (downloaded from the package index when missing)."""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return found
    bins = list(TOOLS.glob("**/bin/cuobjdump"))
    if not bins:
        TOOLS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(TOOLS),
                        "nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm"], check=True)
        for wheel in TOOLS.glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(TOOLS / "x")
        bins = list(TOOLS.glob("**/bin/cuobjdump"))
    bindir = bins[0].parent
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    return str(bins[0])


def kernels(source: str) -> dict[str, list[tuple[int, str]]]:
    """{mangled kernel name: [(address, instruction)]} of kernels/csrc/SOURCE.cu for sm_90."""
    cubin = Path("/tmp") / f"sass_audit_{source}.cubin"
    subprocess.run(["nvcc", *FLAGS, "-cubin", str(ROOT / "kernels" / "csrc" / f"{source}.cu"), "-o", str(cubin)],
                   check=True)
    sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    out = {}
    for block in re.split(r"\n\s+Function : ", sass)[1:]:
        name = block.split("\n")[0].strip()
        out[name] = [(int(a, 16), ins) for a, ins in re.findall(r"/\*([0-9a-f]{4,6})\*/\s+([^;]+);", block)]
    return out


def opcode(ins: str) -> str:
    return ins.split()[1] if ins.startswith("@") else ins.split()[0]


def loops(code: list[tuple[int, str]]) -> list[tuple[int, int, list[str]]]:
    """(first, last index, instructions) of each backward branch's body that holds a tensor-core instruction."""
    index = {a: i for i, (a, _) in enumerate(code)}
    found = []
    for i, (a, ins) in enumerate(code):
        m = re.search(r"BRA (?:`\(.*?\) )?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in index:
            body = [x for _, x in code[index[int(m.group(1), 16)]:i + 1]]
            if any(opcode(x).startswith(MMA) for x in body):
                found.append((index[int(m.group(1), 16)], i, body))
    return sorted(found, key=lambda f: len(f[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="kernels/csrc/SOURCE.cu, without the suffix")
    parser.add_argument("filter", help="a substring of the mangled kernel names to show")
    parser.add_argument("--epilogue", action="store_true", help="also the code after the last tensor-core loop")
    args = parser.parse_args()
    for name, code in kernels(args.source).items():
        if args.filter not in name:
            continue
        print(f"{name}: {len(code)} instructions")
        found = loops(code)
        for first, last, body in found[:3]:
            mma = sum(opcode(x).startswith(MMA) for x in body)
            mix = Counter(opcode(x) for x in body).most_common(12)
            print(f"  loop [{first}, {last}]: {len(body)} instructions, {mma} mma, {len(body) / mma:.1f} per mma: {mix}")
        if args.epilogue and found:
            tail = [x for _, x in code[max(last for _, last, _ in found) + 1:]]
            print(f"  after the loops: {len(tail)} instructions: {Counter(opcode(x) for x in tail).most_common(12)}")


if __name__ == "__main__":
    main()
