"""`python -m quantize ...` runs the qtool command (what `torchrun -m quantize` starts)."""

from .cli import app

app(prog_name="qtool")
