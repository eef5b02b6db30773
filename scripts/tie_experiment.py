"""Which way should the group extremes round? RTN W3/W4 g128 on SmolLM2 with exact symmetric scales
(amax / 3.5 at 3 bits: the negative extreme sits on a tie and rounds to the lowest code) against
scales nudged up by one part in 2^20 (every extreme rounds inward), evaluated as in BENCHMARKS.md.

    python scripts/tie_experiment.py        # -> runs/tie_experiment.json, about 10 minutes on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

from quantize import data, primitives
from quantize.evaluate import evaluate
from quantize.quantizer import load_model, quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset

EXACT = primitives.qparams_from_range
DATA = Path("../shared/data/wikitext-2/test.jsonl")


def nudged(lo, hi, args):
    """Symmetric integer scales one part in 2^20 larger: |w| / s stays below the tie at the extremes."""
    scale, zero = EXACT(lo, hi, args)
    return (scale * (1 + 2**-20) if args.symmetric and not args.is_float else scale), zero


def main() -> None:
    base, tokenizer = load_model("models/smollm2")
    windows = data.evaluation_windows(tokenizer, data.load_texts(str(DATA), split="test"), seq_len=512, max_windows=40)
    results = {}
    for bits in (3, 4):
        for name, rule in (("exact", EXACT), ("inward", nudged)):
            primitives.qparams_from_range = rule  # choose_qparams looks the name up at call time
            model, _ = load_model("models/smollm2")
            scheme = preset("w4a16").with_weights(num_bits=bits, group_size=128)
            quantize_model(model, Recipe.single(scheme, "rtn"), progress=False)
            r = evaluate(model, windows, batch_size=8, base=base, progress=False)
            results[f"w{bits}-{name}"] = {"perplexity": r.perplexity, "kl_divergence": r.kl_divergence}
            print(bits, name, r.perplexity, r.kl_divergence, flush=True)
    primitives.qparams_from_range = EXACT
    Path("runs").mkdir(exist_ok=True)
    Path("runs/tie_experiment.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
