"""Bad input to every command: one `error:` line, exit code 2, no traceback, nothing left behind.

Each case is a command line over a shared set of tiny (broken) models and checkpoints; `{name}`
stands for one of them (see `world`). A case passes only if the command refuses it: a bad input
that exits 0 would be a silently wrong result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from broken import copy_with_config, copy_with_tensor, leftovers, model_with, save_tiny, text_file
from typer.testing import CliRunner

from conftest import quantized_checkpoint, tiny_tokenizer
from quantize.cli import app
from quantize.scheme import preset

runner = CliRunner()
NO_CUDA = not torch.cuda.is_available()
Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "tiny": save_tiny(root / "tiny"), "text": text_file(root / "text.txt")}
    w["ck"] = quantized_checkpoint(root / "ck", preset("w4a16").with_weights(group_size=32))
    tiny_tokenizer().save_pretrained(w["ck"])
    w["retyped"] = copy_with_tensor(w["ck"], root / "retyped", f"{Q}.weight_packed", lambda t: t.float())
    w["reshaped"] = copy_with_tensor(w["ck"], root / "reshaped", f"{Q}.weight_scale", lambda t: t[:, :1].clone())
    w["inf_scale"] = copy_with_tensor(w["ck"], root / "inf_scale", f"{Q}.weight_scale",
                                      lambda t: t.index_fill(0, torch.tensor([0]), float("inf")))
    w["bits8"] = copy_with_config(w["ck"], root / "bits8", num_bits=8)
    w["g64"] = copy_with_config(w["ck"], root / "g64", group_size=64)
    w["badcfg"] = shutil.copytree(w["ck"], root / "badcfg")
    (w["badcfg"] / "config.json").write_text("{not json")
    w["trunc"] = shutil.copytree(w["ck"], root / "trunc")
    (w["trunc"] / "model.safetensors").write_bytes((w["ck"] / "model.safetensors").read_bytes()[:300])
    w["noerrors"] = shutil.copytree(w["ck"], root / "noerrors")  # as RTN without data wrote it before
    layers = [{"name": n, "block": 0, "kind": n, "rel_error": None} for n in (Q, Q.replace("q_", "k_"))]
    (w["noerrors"] / "layer_errors.json").write_text(json.dumps({"layers": layers}))
    w["retokenized"] = shutil.copytree(w["ck"], root / "retokenized")
    (w["retokenized"] / "tokenizer.json").unlink()
    w["errjson"] = shutil.copytree(w["ck"], root / "errjson")
    (w["errjson"] / "layer_errors.json").write_text("[")
    w["nan"] = model_with(root / "nan", float("nan"))
    w["inf"] = model_with(root / "inf", float("inf"))
    w["nanhead"] = model_with(root / "nanhead", float("nan"), "model.embed_tokens.weight")
    w["afile"] = root / "afile"
    w["afile"].write_text("not a folder")
    w["noconfig"] = root / "noconfig"
    w["noconfig"].mkdir()
    w["exists"] = root / "exists"
    w["exists"].mkdir()
    (root / "bad.jsonl").write_text('{"text": "the city"}\n{"text": "the\n')
    (root / "list.jsonl").write_text('{"text": "the city"}\n[1, 2]\n')
    (root / "data.xyz").write_text("the city")
    (root / "rows.jsonl").write_text('{"body": "the city of the world"}\n' * 50)
    return w


QUANTIZE = ["quantize", "{tiny}", "--output", "{root}/out", "--group-size", "32"]
GPTQ = [*QUANTIZE, "--method", "gptq"]  # options that apply to GPTQ, refused whatever the method's rules
CALIB = ["--dataset", "{text}", "--num-samples", "2", "--seq-len", "16"]
CALIBRATE = ["calibrate", "{tiny}", "--output", "{root}/stats", "--dataset", "{text}", "--num-samples", "2",
             "--seq-len", "16"]
EVAL = ["eval", "{ck}", "--dataset", "{text}", "--seq-len", "16", "--max-windows", "2"]
BENCH = ["bench", "tiny", "--random-weights", "--device", "cpu", "--batch-sizes", "1", "--decode-tokens", "2",
         "--prefill-len", "8"]

CASES = {
    # quantize: numbers (0 and negatives are values, not "unset")
    "q-bits-0": (QUANTIZE + ["--bits", "0"], "bits must be 1..8, got 0"),
    "q-bits-neg": (QUANTIZE + ["--bits", "-4"], "got -4"),
    "q-bits-9": (QUANTIZE + ["--bits", "9"], "got 9"),
    "q-bits-0-scheme": (QUANTIZE + ["--scheme", "w4a16", "--bits", "0"], "got 0"),
    "q-bits-text": (QUANTIZE + ["--bits", "four"], "--bits"),
    "q-group-0": (QUANTIZE[:-2] + ["--group-size", "0"], "group size must be a positive number of inputs, or -1 "
                                                         "for per channel; got 0"),
    "q-group-neg": (QUANTIZE[:-2] + ["--group-size", "-8"], "got -8"),
    "q-group-big": (QUANTIZE[:-2] + ["--group-size", "4096"], "group size 4096 is larger"),
    "q-num-samples-0": (GPTQ + ["--num-samples", "0"], "--num-samples must be > 0, got 0"),
    "q-num-samples-neg": (GPTQ + ["--num-samples", "-3"], "--num-samples must be > 0"),
    "q-seq-len-0": (GPTQ + ["--seq-len", "0"], "--seq-len must be > 0"),
    "q-seq-len-big": (QUANTIZE + ["--method", "gptq", "--dataset", "{text}", "--seq-len", "100000"],
                      "above the model's maximum of 256"),
    "q-batch-0": (GPTQ + ["--batch-size", "0"], "--batch-size must be > 0"),
    "q-damp-neg": (GPTQ + ["--damp", "-0.1"], "--damp must be >= 0"),
    "q-damp-nan": (GPTQ + ["--damp", "nan"], "--damp must be a finite number"),
    "q-method": (QUANTIZE + ["--method", "magic"], "unknown method 'magic'"),
    "q-scheme": (QUANTIZE + ["--scheme", "w5a16"], "unknown scheme preset 'w5a16'"),
    "q-recipe": (QUANTIZE[:-2] + ["--recipe", "{root}/nope.yaml"], "recipe file not found"),
    "q-alpha": (QUANTIZE[:-2] + ["--method", "smoothquant", "--alpha", "strong"], "alpha must be in [0, 1]"),
    "q-format": (QUANTIZE + ["--format", "zip"], "unknown --format 'zip'"),
    "q-device-tpu": (QUANTIZE + ["--device", "tpu"], "unknown --device 'tpu'"),
    "q-device-cuda": (QUANTIZE + ["--device", "cuda"], "CUDA is not available"),
    "q-unknown-option": (QUANTIZE + ["--frobnicate"], "No such option: --frobnicate"),
    "q-no-output": (["quantize", "{tiny}"], "Missing option"),
    # quantize: where it writes
    "q-out-is-model": (["quantize", "{tiny}", "--output", "{tiny}", "--overwrite", "--group-size", "32"],
                       "which this command reads"),
    "q-out-in-model": (["quantize", "{tiny}", "--output", "{tiny}/q", "--group-size", "32"], "which this command reads"),
    "q-out-holds-model": (["quantize", "{tiny}", "--output", "{root}", "--overwrite", "--group-size", "32"],
                          "which this command reads"),
    "q-out-exists": (["quantize", "{tiny}", "--output", "{exists}", "--group-size", "32"], "--overwrite"),
    "q-out-is-file": (["quantize", "{tiny}", "--output", "{afile}", "--overwrite", "--group-size", "32"],
                      "is an existing file"),
    "q-out-under-file": (["quantize", "{tiny}", "--output", "{afile}/q", "--group-size", "32"], "is a file, not a folder"),
    # quantize: what it reads
    "q-model-missing": (["quantize", "{root}/nope", "--output", "{root}/out"], "the folder {root}/nope does not exist"),
    "q-model-no-config": (["quantize", "{noconfig}", "--output", "{root}/out"], "no config.json"),
    "q-model-is-checkpoint": (["quantize", "{ck}", "--output", "{root}/out", "--group-size", "32"], "already quantized"),
    "q-nan-rtn": (["quantize", "{nan}", "--output", "{root}/out", "--group-size", "32"], "NaN or Inf"),
    "q-inf-rtn": (["quantize", "{inf}", "--output", "{root}/out", "--group-size", "32"], "NaN or Inf"),
    "q-nan-embed": (["quantize", "{nanhead}", "--output", "{root}/out", "--group-size", "32"], "embed_tokens"),
    "q-nan-int8": (["quantize", "{nan}", "--output", "{root}/out", "--method", "int8"], "NaN or Inf"),
    "q-nan-fp8": (["quantize", "{nan}", "--output", "{root}/out", "--method", "fp8"], "NaN or Inf"),
    "q-nan-gptq": (["quantize", "{nan}", "--output", "{root}/out", "--group-size", "32", "--method", "gptq", *CALIB],
                   "NaN or Inf"),
    "q-nan-awq": (["quantize", "{nan}", "--output", "{root}/out", "--group-size", "32", "--method", "awq", *CALIB],
                  "NaN or Inf"),
    "q-inf-smoothquant": (["quantize", "{inf}", "--output", "{root}/out", "--method", "smoothquant", *CALIB],
                          "NaN or Inf"),
    "q-gptq-no-data": (QUANTIZE + ["--method", "gptq"], "needs calibration data"),
    "q-data-missing": (QUANTIZE + ["--method", "gptq", "--dataset", "{root}/nope.txt", "--seq-len", "16"],
                       "dataset file not found"),
    "q-data-jsonl": (QUANTIZE + ["--method", "gptq", "--dataset", "{root}/bad.jsonl", "--seq-len", "16"],
                     "bad.jsonl, line 2: not valid JSON"),
    "q-data-jsonl-list": (QUANTIZE + ["--method", "gptq", "--dataset", "{root}/list.jsonl", "--seq-len", "16"],
                          "list.jsonl, line 2: expected a JSON object"),
    "q-data-suffix": (QUANTIZE + ["--method", "gptq", "--dataset", "{root}/data.xyz", "--seq-len", "16"],
                      "unsupported dataset file"),
    "q-data-column": (QUANTIZE + ["--method", "gptq", "--dataset", "{root}/rows.jsonl", "--seq-len", "16"],
                      "has no column 'text'"),
    "q-calibration-missing": (QUANTIZE + ["--calibration", "{root}/nostats"], "nostats"),
    # calibrate
    "c-no-dataset": (["calibrate", "{tiny}", "--output", "{root}/stats"], "--dataset is required"),
    "c-observer": (CALIBRATE + ["--observer", "best"], "best"),
    "c-target": (CALIBRATE + ["--target", "int4"], "unknown --target 'int4'"),
    "c-percentile-0": (CALIBRATE + ["--observer", "percentile", "--percentile", "0"], "--percentile must be > 0"),
    "c-percentile-101": (CALIBRATE + ["--observer", "percentile", "--percentile", "101"], "<= 100"),
    "c-samples-0": (CALIBRATE + ["--num-samples", "0"], "--num-samples must be > 0"),
    "c-out-is-model": (["calibrate", "{tiny}", "--output", "{tiny}", "--overwrite", "--dataset", "{text}"],
                       "which this command reads"),
    "c-out-exists": (["calibrate", "{tiny}", "--output", "{exists}", "--dataset", "{text}"], "--overwrite"),
    "c-device-cuda": (CALIBRATE + ["--device", "cuda:0"], "CUDA is not available"),
    # eval
    "e-max-windows-0": (EVAL[:-1] + ["0"], "--max-windows must be > 0, got 0"),
    "e-seq-len-0": (["eval", "{ck}", "--dataset", "{text}", "--seq-len", "0"], "--seq-len must be > 0"),
    "e-seq-len-big": (["eval", "{ck}", "--dataset", "{text}", "--seq-len", "100000"],
                      "--seq-len 100000 is above the model's maximum of 256"),
    "e-batch-0": (EVAL + ["--batch-size", "0"], "--batch-size must be > 0"),
    "e-dtype": (EVAL + ["--dtype", "float64"], "unknown --dtype 'float64'"),
    "e-device-cuda": (EVAL + ["--device", "cuda"], "CUDA is not available"),
    "e-model-missing": (["eval", "{root}/nope", "--dataset", "{text}"], "does not exist"),
    "e-data-missing": (["eval", "{ck}", "--dataset", "{root}/nope.txt", "--seq-len", "16"], "dataset file not found"),
    "e-retyped": (["eval", "{retyped}", *EVAL[2:]], "weight_packed is float32"),
    "e-inf-scale": (["eval", "{inf_scale}", *EVAL[2:]], "contains NaN or Inf"),
    "e-nan-model": (["eval", "{nan}", "--dataset", "{text}", "--seq-len", "16", "--max-windows", "2"],
                    "perplexity is nan"),
    "e-json-dir": (EVAL + ["--json", "{exists}"], "--json {exists} is a folder"),
    "e-base-missing": (EVAL + ["--base", "{root}/nope"], "does not exist"),
    "e-no-tokenizer": (["eval", "{retokenized}", "--dataset", "{text}", "--seq-len", "16"], "has no usable tokenizer"),
    # inspect
    "i-missing": (["inspect", "{root}/nope"], "no config.json"),
    "i-float": (["inspect", "{tiny}"], "not quantized"),
    "i-retyped": (["inspect", "{retyped}"], "weight_packed is float32 [96, 12], but the config implies int32 [96, 12]"),
    "i-reshaped": (["inspect", "{reshaped}"], "weight_scale is float32 [96, 1]"),
    "i-inf-scale": (["inspect", "{inf_scale}"], "contains NaN or Inf"),
    "i-bits8": (["inspect", "{bits8}"], "does not match its config"),
    "i-g64": (["inspect", "{g64}"], "weight_scale is float32 [96, 5], but the config implies float32 [96, 3]"),
    "i-bad-config": (["inspect", "{badcfg}"], "corrupt"),
    "i-truncated": (["inspect", "{trunc}"], "corrupt checkpoint file"),
    "i-json-dir": (["inspect", "{ck}", "--json", "{exists}"], "is a folder"),
    # report
    "r-missing": (["report", "{root}/nope"], "nope"),
    "r-bad-json": (["report", "{errjson}"], "not valid JSON"),
    "r-no-errors": (["report", "{noerrors}"], "quantized without calibration data"),
    "r-worst-0": (["report", "{ck}", "--worst", "0"], "--worst must be > 0"),
    "r-plot-dir": (["report", "{ck}", "--plot", "{exists}"], "--plot {exists} is a folder"),
    "r-plot-under-file": (["report", "{ck}", "--plot", "{afile}/x.png"], "is a file, not a folder"),
    # export
    "x-out-exists": (["export", "{ck}", "--output", "{exists}"], "--overwrite"),
    "x-out-is-checkpoint": (["export", "{ck}", "--output", "{ck}", "--overwrite"], "which this command reads"),
    "x-out-is-file": (["export", "{ck}", "--output", "{afile}", "--overwrite"], "is an existing file"),
    "x-format": (["export", "{ck}", "--output", "{root}/x", "--format", "gguf"], "unknown --format 'gguf'"),
    "x-missing": (["export", "{root}/nope", "--output", "{root}/x"], "no config.json"),
    "x-retyped": (["export", "{retyped}", "--output", "{root}/x", "--format", "qtool"], "weight_packed is float32"),
    "x-retyped-ct": (["export", "{retyped}", "--output", "{root}/x"], "weight_packed is float32"),
    # bench
    "b-batch-sizes-0": (BENCH[:-6] + ["--batch-sizes", "1,0"], "--batch-sizes must be positive integers"),
    "b-batch-sizes-text": (BENCH[:-6] + ["--batch-sizes", "one"], "--batch-sizes must be positive integers"),
    "b-decode-0": (BENCH + ["--decode-tokens", "0"], "--decode-tokens must be > 0"),
    "b-prefill-neg": (BENCH + ["--prefill-len", "-1"], "--prefill-len must be > 0"),
    "b-default-cuda": (["bench", "{ck}"], "CUDA is not available"),
    "b-config": (["bench", "huge-9000", "--random-weights", "--device", "cpu"], "huge-9000"),
    "b-lm-head": (["bench", "{ck}", "--device", "cpu", "--quantize-lm-head"], "--quantize-lm-head applies to"),
    "b-json-dir": (BENCH + ["--json", "{exists}"], "is a folder"),
    "b-positions": (["bench", "{ck}", "--device", "cpu", "--prefill-len", "300"],
                    "--prefill-len + --decode-tokens 364 is above the model's maximum of 256"),
    "b-missing": (["bench", "{root}/nope", "--device", "cpu"], "does not exist"),
    # kernels
    "k-unknown": (["kernels", "frob"], "No such command 'frob'"),
    "k-info-option": (["kernels", "info", "--frob"], "No such option: --frob"),
    "k-info-json-dir": (["kernels", "info", "--json", "{exists}"], "is a folder"),
    "k-build-no-cuda": (["kernels", "build"], "could not be built"),
    "k-build-jobs": (["kernels", "build", "--jobs", "0"], "--jobs"),
}
NEEDS_NO_CUDA = {"q-device-cuda", "c-device-cuda", "e-device-cuda", "b-default-cuda", "k-build-no-cuda"}


def test_matrix_is_large_and_covers_every_command():
    commands = {args[0] for args, _ in CASES.values()}
    assert len(CASES) >= 60
    assert commands == {"quantize", "calibrate", "eval", "inspect", "report", "export", "bench", "kernels"}


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(world, case):
    if case in NEEDS_NO_CUDA and not NO_CUDA:
        pytest.skip("this machine has CUDA")
    args, fragment = CASES[case]
    names = {k: str(v) for k, v in world.items()}
    before = _listing(world["root"])
    res = runner.invoke(app, [a.format(**names) for a in args])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    assert len(errors) == 1, res.output
    assert fragment.format(**names) in errors[0], res.output
    assert _listing(world["root"]) == before and not leftovers(world["root"]), "the command left files behind"
