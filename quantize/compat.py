"""What differs between the transformers releases pyproject.toml allows (5.0 to the newest 5.x), in one place.

transformers 5.25 renamed a causal LM's KV-cache argument and output from `past_key_values` to `cache` (the old
keyword still works, with a FutureWarning, until 5.40). qtool's own decode loops (quantize/bench.py, the synthetic
calibration text of quantize/data.py) pass and read it through these names, so they run warning-free on every
release; the keyword is a constant, so a compiled decode step traces it as a plain keyword argument.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

CACHE_KWARG = "cache" if Version(transformers.__version__).release >= (5, 25) else "past_key_values"


def returned_cache(output):
    """The KV cache a forward with use_cache=True returned: `output.cache` from 5.25, `past_key_values` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
