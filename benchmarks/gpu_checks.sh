#!/usr/bin/env bash
# The checks that need a CUDA device, in one go:
#   1. `pytest -m gpu` on the pretraining tests: one pass == two passes on CUDA (sdpa/eager, both padding
#      sides, fp32 1e-5), bf16 without NaN, the fused LM term == full logits, --bf16/--fp16 Trainer runs,
#      DeepSpeed ZeRO-3 / FSDP2 runs (full and LoRA) == a plain run, ZeRO-3 + bf16 (the 8-GPU recipe's setting);
#   2. the training-step benchmark on the GPU, fp32 and bf16 autocast;
#   3. data-parallel encoding: `llara index` over 10^5 synthetic documents (tiny model) in one process and, with
#      several GPUs, one process per GPU under torchrun (benchmarks/bench_index_scale.py).
#
#   OUT=benchmarks/results/gpu bash benchmarks/gpu_checks.sh [LLaRA folder with config + tokenizer]
#
# The folder (default: the converted SmolLM2 cache) may hold no weights: the benchmark builds the architecture with
# random weights (time and memory do not depend on them). On a machine without the project's venv, wheels in
# .whl/ are installed into /tmp/site first. Each step has its own time limit; a failing step does not stop the others.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
MODEL=${1:-outputs/cache/smollm2-llara}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi -L
"$PY" -c "import torch, transformers, peft, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__,
'peft', peft.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())" 2>&1 | tail -1 | tee "$OUT/versions.txt"

status=0
step() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name" ; local t0=$SECONDS
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1 || { echo "=== $name FAILED ($?)"; status=1; }
  echo "=== $name took $((SECONDS - t0)) s"
}
step gpu_tests 270 "$PY" -m pytest -m gpu -p no:cacheprovider -o addopts="" --timeout=260 -ra -q \
  tests/test_pretrain_model.py tests/test_pretrain_train.py tests/test_sharded_training.py
step bench_fp32 130 "$PY" benchmarks/bench_pretrain_step.py --device cuda --model "$MODEL" --random-init \
  --batch 8 --steps 10 --out "$OUT/pretrain_step_cuda_fp32.json"
step bench_bf16 130 "$PY" benchmarks/bench_pretrain_step.py --device cuda --model "$MODEL" --random-init --bf16 \
  --batch 8 --steps 10 --out "$OUT/pretrain_step_cuda_bf16.json"
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
PROCS=$( [ "$NGPU" -gt 1 ] && echo "1 $NGPU" || echo 1 )
step index_scale 150 "$PY" benchmarks/bench_index_scale.py --sizes 100000 --processes $PROCS \
  --workdir /tmp/bench_index_scale --out "$OUT/index_scale_cuda.json"
exit $status
