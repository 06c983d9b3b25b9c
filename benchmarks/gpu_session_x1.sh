#!/bin/bash
# Single-GPU device calls (the device tool's nvidia-h100-x1), each under 10 minutes:
#     PART=tests OUT=<dir> bash benchmarks/gpu_session_x1.sh   # every GPU test
#     PART=bench OUT=<dir> bash benchmarks/gpu_session_x1.sh   # kernels, W1 + HF, fidelity
#     PART=fidelity OUT=<dir> bash benchmarks/gpu_session_x1.sh   # launch probe, fidelity (100/rate)
# Everything comes back as $OUT/<part>.tgz. Run from the repository root with PYTHONPATH set.
set -u
R=$(mktemp -d)
T0=$SECONDS
stamp() { echo "[$((SECONDS - T0)) s] $*"; }
case "${PART:-tests}" in
  tests)
    timeout 560 python3 -m pytest -m gpu tests/gpu tests/kernels -q -p no:cacheprovider -rs \
      --durations=10 > "$R"/gpu_tests.log 2>&1; stamp "gpu tests rc=$?"
    tail -5 "$R"/gpu_tests.log ;;
  bench)
    timeout 150 python3 benchmarks/bench_kernels.py --sections gemv,step --quick \
      --out "$R"/bench_kernels.json > "$R"/kernels.log 2>&1; stamp "kernels rc=$?"
    OUT="$R" timeout 270 python3 benchmarks/bench_gpu.py --models llama-3.1-8b \
      --parts w1,ss,ss_kernels,hf > "$R"/bench_gpu.log 2>&1; stamp "bench_gpu rc=$?"
    timeout 150 python3 benchmarks/bench_sim_fidelity.py --device cuda \
      --model dummy:llama-3.1-8b --rates 2,8,16 --num-prompts 40 --input-len 512 \
      --output-len 128 --vocab-size 32000 --batch-sizes 1,2,4,8,16,32,64 \
      --context-lens 128,512,1024 --prefill-lens 16,64,128,256,512,1024 --max-model-len 4096 \
      --result-dir "$R" > "$R"/fidelity.log 2>&1; stamp "fidelity rc=$?"
    tail -30 "$R"/bench_gpu.log ;;
  fidelity)  # the eager prefill launch probe, then the traced fidelity run (100 prompts a rate)
    timeout 120 python3 benchmarks/probe_prefill_launch.py --model dummy:llama-3.1-8b \
      --prompt-len 512 --range-ratio 0.5 --num 40 --threads 16 > "$R"/probe.log 2>&1
    stamp "probe rc=$?"; tail -4 "$R"/probe.log
    LABEL=cuda-llama-3.1-8b-x1-$(git rev-parse --short HEAD 2>/dev/null || echo tree)
    timeout 420 python3 benchmarks/bench_sim_fidelity.py --device cuda \
      --model dummy:llama-3.1-8b --rates 2,8,16 --num-prompts 100 --input-len 512 \
      --output-len 128 --vocab-size 32000 --batch-sizes 1,2,4,8,16,32,64 \
      --context-lens 128,512,1024 --prefill-lens 16,64,128,256,512,1024 --max-model-len 4096 \
      --calibration-requests 20 --label "${LABEL_OVERRIDE:-$LABEL}" --result-dir "$R" \
      > "$R"/fidelity.log 2>&1; stamp "fidelity rc=$?"
    grep -A12 '^rate\|^overheads' "$R"/fidelity.log | grep -v '^ *real steps' | head -60 ;;
esac
tar -czf "$OUT/${PART:-tests}.tgz" -C "$R" .
