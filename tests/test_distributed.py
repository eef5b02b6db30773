"""Several processes through torch.distributed (quantize/distributed.py): two CPU processes on gloo give
the single process's checkpoint up to the order of float reductions."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import calibration_ids, run_job
from test_moe import never_route_expert_zero, save, tiny_moe

from conftest import save_tiny, tiny_tokenizer
from quantize.checkpoint import quantized_layers
from quantize.distributed import LOCAL, Collective, DistributedError, relaunch_args
from quantize.evaluate import evaluate
from quantize.loading import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                         os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def compare(single: Path, several: Path) -> tuple[float, float]:
    """(fraction of equal weight codes over all quantized layers, relative perplexity difference)."""
    a, _ = load_checkpoint(single)
    b, _ = load_checkpoint(several)
    la, lb = quantized_layers(a), quantized_layers(b)
    assert la.keys() == lb.keys()
    same = sum(int((la[n].codes() == lb[n].codes()).sum()) for n in la)
    total = sum(la[n].codes().numel() for n in la)
    windows = torch.cat(calibration_ids(4, 48))
    pa = evaluate(a, windows, batch_size=4, progress=False).perplexity
    pb = evaluate(b, windows, batch_size=4, progress=False).perplexity
    assert math.isfinite(pa) and math.isfinite(pb)
    return same / total, abs(pb / pa - 1)


def test_relaunch_args_drop_gpus():
    argv = ["quantize", "m", "--gpus", "2", "--method", "gptq", "--gpus=4", "--output", "o"]
    assert relaunch_args(argv, 2) == ["--standalone", "--nproc-per-node", "2", "-m", "quantize",
                                      "quantize", "m", "--method", "gptq", "--output", "o"]


def test_assign_balances_and_local_is_identity():
    two = Collective(rank=1, size=2)
    owners = two.assign({"q": 8.0, "k": 2.0, "v": 2.0, "o": 4.0})
    assert owners == {"q": 0, "k": 1, "v": 1, "o": 1} and two.mine(owners) == ["k", "v", "o"]
    assert list(owners) == ["q", "k", "v", "o"]  # the caller's order, on every rank
    t = torch.ones(3)
    assert LOCAL.sum_(t) is t and LOCAL.count(5) == 5 and LOCAL.shard([t]) == [t]
    assert LOCAL.assign({"a": 1.0, "b": 3.0}) == {"a": 0, "b": 0}
    with pytest.raises(DistributedError, match="3 calibration batches cannot be shared by 4 processes"):
        Collective(rank=0, size=4).shard([t, t, t])
    assert Collective(rank=1, size=3).shard(list(range(7))) == [2, 3]


@contextlib.contextmanager
def one_blas_thread():
    """The one-process side of a comparison on one BLAS thread, as torchrun gives each of its processes: the same
    arithmetic on both sides. With 2 threads the BLAS rounds differently (a triangular-solve form of GPTQ's inverse
    tried in session 10 then agreed on 99.72% of the 8-bit static codes; a loaded run of the 4-bit CLI test in
    session 20 on 99.79%; bar 99.9%): thread counts, not the distributed reductions these tests check."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_gpus_2_on_gloo_matches_one_process(tmp_path):
    """`qtool quantize --gpus 2 --device cpu` starts torchrun, two gloo processes calibrate on half the
    batches each, rank 0 writes; codes and perplexity agree with the one-process checkpoint."""
    from typer.testing import CliRunner

    from quantize.cli import app

    # Every word of the tokenizer (about 100) and a model narrower than that: block 0 reads the embeddings
    # of the distinct tokens, and with fewer of them than its width its Hessians are singular and GPTQ's
    # choices hang on float rounding (a real model's inputs are full rank).
    model = save_tiny(tmp_path / "tiny", hidden_size=64, intermediate_size=128)
    text = tmp_path / "text.txt"
    words = [w for w in tiny_tokenizer().get_vocab() if not w.startswith("<")]
    g = torch.Generator().manual_seed(0)
    text.write_text("\n".join(" ".join(words[i] for i in torch.randint(0, len(words), (200,), generator=g))
                              for _ in range(60)))
    args = ["quantize", str(model), "--method", "gptq", "--group-size", "32", "--dataset", str(text),
            "--num-samples", "16", "--seq-len", "64", "--batch-size", "2"]
    with one_blas_thread():
        single = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    run = subprocess.run([sys.executable, "-m", "quantize", *args, "--output", str(tmp_path / "two"),
                          "--gpus", "2", "--device", "cpu"], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)
    same, ppl = compare(tmp_path / "one", tmp_path / "two")
    assert same >= 0.999 and ppl < 1e-3, (same, ppl)


def test_methods_and_experts_on_two_processes_match_one(tmp_path):
    """AWQ, SmoothQuant, static INT8 activations (minmax observers) with GPTQ weights, GPTQ without
    true-sequential groups (whole linears per rank), and GPTQ on a Mixtral with an expert the router never
    picks, each run by two gloo processes in one torchrun call and compared with one process."""
    dense = save_tiny(tmp_path / "dense", hidden_size=128, intermediate_size=256, vocab_size=512)
    mixtral = tiny_moe("mixtral", num_local_experts=5)
    never_route_expert_zero(mixtral)  # no rank has tokens for it: RTN on every rank, as in one process
    moe = save(mixtral, tmp_path / "moe")
    jobs = [dict(model=str(dense), method="awq", scheme="w4a16-asym", group_size=64),
            dict(model=str(dense), method="smoothquant", scheme="w8a8-int8"),
            dict(model=str(dense), method="gptq", scheme="w8a8-int8-static"),
            # one group of four units: each rank takes whole linears (their column loops side by side)
            dict(model=str(dense), method="gptq", scheme="w4a16", group_size=32, settings={"true_sequential": False}),
            dict(model=str(moe), method="gptq", scheme="w4a16", group_size=32)]
    with one_blas_thread():
        for i, job in enumerate(jobs):
            run_job({**job, "output": str(tmp_path / f"one-{i}")})
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps([{**job, "output": str(tmp_path / f"two-{i}")} for i, job in enumerate(jobs)]))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "tests" / "dist_worker.py"), str(spec)], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = [(job["method"], job["scheme"], *compare(tmp_path / f"one-{i}", tmp_path / f"two-{i}"))
               for i, job in enumerate(jobs)]
    assert all(same >= 0.999 and ppl < 1e-3 for _, _, same, ppl in results), results


def test_bad_process_settings_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from quantize import distributed
    from quantize.cli import app

    model = save_tiny(tmp_path / "tiny")
    result = CliRunner().invoke(app, ["quantize", str(model), "--gpus", "0", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--gpus" in result.output and "0" in result.output, result.output
    os.environ.update(WORLD_SIZE="2", LOCAL_RANK="0")
    try:
        with pytest.raises(DistributedError, match="--device cuda:1 names one GPU"):
            distributed.start("cuda:1")
    finally:
        del os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]
