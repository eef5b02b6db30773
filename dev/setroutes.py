"""Set W4/W8 mixed-input routes in kernels/tuning.py for an A/B on the device.

    python3 dev/setroutes.py "4,4096,6144:9=wo_gemm;16=wo_gemm" "4,14336,4096:16=k128 t16 v0 s0"

Each argument names a MIXED key (codes, K, N) and the batches to set; the line is rewritten in place.
"""
import ast
import sys

PATH = "kernels/tuning.py"


def set_routes(text: str, spec: str) -> str:
    key, entries = spec.split(":", 1)
    prefix = "    " + repr(tuple(int(v) for v in key.split(","))) + ":"
    old = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    if old is None:
        raise SystemExit(f"no MIXED line for {key!r} in {PATH}")
    table = ast.literal_eval(old[len(prefix):].strip().rstrip(","))
    for entry in entries.split(";"):
        m, route = entry.split("=")
        table[int(m)] = route
    body = ", ".join(f'{m}: "{r}"' for m, r in sorted(table.items()))
    return text.replace(old, f"{prefix} {{{body}}},")


if __name__ == "__main__":
    text = open(PATH).read()
    for spec in sys.argv[1:]:
        text = set_routes(text, spec)
    open(PATH, "w").write(text)
