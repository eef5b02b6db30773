"""Write a random-weight model in the shapes of quantize/shapes.py (or any config) as a sharded
safetensors directory, one decoder block in host memory at a time, with a word-level tokenizer
built from a text file (or a synthetic vocabulary), so `qtool quantize` runs on it offline:

    python scripts/make_random_model.py llama-8b models/random-8b --text ../shared/data/wikitext-2/wiki.valid.tokens
    python scripts/make_random_model.py llama-70b models/random-70b-4l --layers 4
"""

from __future__ import annotations

import argparse
import collections
import re
import time
from pathlib import Path

import torch

from quantize.shapes import CONFIGS, write_random_model


def word_tokenizer(text_file: Path | None, vocab_size: int):
    """A word-level tokenizer over the most frequent words of `text_file` (or words w0, w1, ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if text_file is not None:
        counts = collections.Counter(re.findall(r"\w+|[^\w\s]", text_file.read_text(errors="replace")))
        words = [w for w, _ in counts.most_common(vocab_size - len(vocab))]
    else:
        words = [f"w{i}" for i in range(min(vocab_size, 32000) - len(vocab))]
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help=f"one of {sorted(CONFIGS)}, a model directory or a config.json")
    parser.add_argument("output", type=Path)
    parser.add_argument("--layers", type=int, default=None, help="decoder blocks (default: the config's)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--text", type=Path, default=None, help="text file whose words make the tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the random numbers are drawn")
    args = parser.parse_args()
    start = time.perf_counter()
    out = write_random_model(args.config, args.output, layers=args.layers, dtype=getattr(torch, args.dtype),
                             seed=args.seed, device=args.device)
    from transformers import AutoConfig

    word_tokenizer(args.text, AutoConfig.from_pretrained(out).vocab_size).save_pretrained(out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out} ({size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
