# Shared by dev/measure_big.sh and dev/measure_multi.sh (sourced, not run): the environment of a device
# call without network, logging, calibration text, and `quant`, one measured `qtool quantize`.
# Run from the checkout's root, with OUT, WORK and LOG set by the caller.
mkdir -p "$OUT" "$WORK" build/pythonpath
ln -sfn ../../kernels build/pythonpath/qtool_kernels  # import the kernels package without installing
export PYTHONPATH=$PWD:$PWD/build/pythonpath${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export QTOOL_TIMELINE=${QTOOL_TIMELINE:-1}  # each run's phases on stderr (quantize/timeline.py)
exec > >(tee -a "$OUT/$LOG") 2>&1
PY=${PY:-python3}
QTOOL=("$PY" -c "from quantize.cli import app; app()")
CAL=(--num-samples "${SAMPLES:-128}" --seq-len "${SEQ:-2048}" --compute-dtype "${COMPUTE:-bfloat16}")

step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }
run() { "$@" || echo "FAILED (exit $?): $*"; }

data() {
  DATA=${DATA:-}
  for f in "$DATA" ../shared/data/wikitext-2/wiki.valid.tokens shared/data/wikitext-2/wiki.valid.tokens; do
    if [ -n "$f" ] && [ -f "$f" ]; then DATA=$f; echo "calibration text: $DATA"; return; fi
  done
  DATA=$WORK/calib.txt
  # Random words: the models are random too, and speed does not depend on the text.
  "$PY" -c "
import random; random.seed(0)
words = [''.join(random.choices('abcdefghijklmnopqrstuvwxyz', k=random.randint(2, 9))) for _ in range(20000)]
open('$DATA', 'w').write('\n'.join(' '.join(random.choices(words, k=100)) for _ in range(6000)))"
  echo "calibration text: generated $DATA"
}

quant() {  # quant NAME MODEL TIMEOUT ARGS...: one measured `qtool quantize` into $WORK/q-NAME
  local name=$1 model=$2 limit=$3; shift 3
  rm -rf "$WORK/q-$name" "$WORK/.q-$name.partial"
  step "$name: qtool quantize $model $*"
  run "$PY" dev/measure_run.py --name "$name" --json "$OUT/$name.json" --timeout "$limit" \
      --partial "$WORK/.q-$name.partial" -- "${QTOOL[@]}" quantize "$model" --output "$WORK/q-$name" \
      --device "${DEVICE:-cuda}" "$@"
  [ -d "$WORK/q-$name" ] && du -sm "$WORK/q-$name" | tee -a "$OUT/sizes.txt"
  # Disk: the next model needs the room (KEEP=1 keeps checkpoints for dev/measure_multi.sh's compare8).
  [ -n "${KEEP:-}" ] || rm -rf "$WORK/q-$name" "$WORK/.q-$name.partial"
}

versions() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
}
