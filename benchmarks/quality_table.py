"""Markdown table of the SmolLM2 quality runs (benchmarks/smollm2_quality.sh, benchmarks/llmcompressor_baseline.py).

    python benchmarks/quality_table.py runs/quality runs/llmc
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(quality: Path, llmc: Path | None):
    for ev in sorted(quality.glob("*.eval.json")):
        name = ev.name.removesuffix(".eval.json")
        e = json.loads(ev.read_text())
        t = quality / f"{name}.time.json"
        seconds = json.loads(t.read_text())["seconds"] if t.is_file() else None
        yield f"qtool {name}", e, seconds
    if llmc is not None and llmc.is_dir():
        for f in sorted(llmc.glob("*.json")):
            e = json.loads(f.read_text())
            yield f"llm-compressor {e['llmcompressor']} {e['config']}", e, round(e["seconds"])


def main() -> None:
    quality = Path(sys.argv[1])
    llmc = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    print("| run | perplexity | vs float | KL(float ‖ q) | top-1 agreement | quantize wall time (s) |")
    print("|---|---|---|---|---|---|")
    for name, e, seconds in rows(quality, llmc):
        rel = e["perplexity"] / e["base_perplexity"] - 1
        print(f"| {name} | {e['perplexity']:.3f} | {rel:+.2%} | {e['kl_divergence']:.4f} | "
              f"{e['top1_agreement']:.2%} | {seconds if seconds is not None else '-'} |")


if __name__ == "__main__":
    main()
