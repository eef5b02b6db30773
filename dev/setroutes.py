"""Set W4/W8 mixed-input routes in kernels/tuning.py for an A/B on the device (mixed_sweep.merge_entries writes them).

    python3 dev/setroutes.py "4,4096,6144:9=wo_gemm;16=wo_gemm" "4,14336,4096:16=k128 t16 v0 s0"

Each argument names a MIXED key (codes, K, N) and the batches to set; the row's other cells stay. They go into the
running card's table (MIXED on an H200 or without a GPU, MIXED_H100 on an H100), where they take effect.
"""
import sys

from mixed_sweep import card_table, merge_entries


def parse(spec: str) -> tuple[tuple[int, ...], dict[int, str]]:
    key, entries = spec.split(":", 1)
    cells = dict(entry.split("=") for entry in entries.split(";"))
    return tuple(int(v) for v in key.split(",")), {int(m): route for m, route in cells.items()}


if __name__ == "__main__":
    merge_entries(dict(parse(spec) for spec in sys.argv[1:]), card_table("mixed", None))  # this card's table
