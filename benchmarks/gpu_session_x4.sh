#!/bin/bash
# One device call on four H100s of one host (the device tool's nvidia-h100-x4): the two-GPU
# measures run on GPUs 0-1 and 2-3 at the same time, then single-GPU runs take the freed GPUs.
# Every log and JSON goes under $OUT/{a,b,c,d}. Run from the repository root:
#     PDSERVE_COMMIT=<hash> OUT=<dir> bash benchmarks/gpu_session_x4.sh
# Needs PYTHONPATH with this tree and pyzmq/fastapi/uvicorn/pydantic/prometheus_client/py-spy.
set -u
mkdir -p "$OUT"/a "$OUT"/b "$OUT"/c "$OUT"/d
export PDSERVE_COMMIT=${PDSERVE_COMMIT:-unknown}
T0=$SECONDS
stamp() { echo "[$((SECONDS - T0)) s] $*"; }

gpus_01() {  # KV transfer, PD vs fused TTFT, PD goodput; then kernels and the single stream
  export CUDA_VISIBLE_DEVICES=0,1
  timeout 70 python3 -m pytest -m gpu tests/kvxfer/test_cuda_ipc.py -q -p no:cacheprovider \
    > "$OUT"/a/ipc_tests.log 2>&1; stamp "ipc tests rc=$?"
  timeout 90 python3 benchmarks/bench_kvxfer.py --skip-cpu --iters 8 \
    --out "$OUT"/a/kvxfer_gpu.json > "$OUT"/a/kvxfer.log 2>&1; stamp "kvxfer rc=$?"
  OUT="$OUT"/a timeout 330 python3 benchmarks/bench_pd_gpu.py --parts pd,fused1 \
    --rates 4,5,6,7,8 --mix-requests 150 --diagnose 6 > "$OUT"/a/pd.log 2>&1
  stamp "pd,fused1 rc=$?"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/bench_kernels.py --sections gemv,step \
    --quick --out "$OUT"/c/bench_kernels.json > "$OUT"/c/kernels.log 2>&1 &
  CUDA_VISIBLE_DEVICES=1 OUT="$OUT"/c timeout 150 python3 benchmarks/bench_gpu.py \
    --models llama-3.1-8b --parts ss,ss_kernels > "$OUT"/c/bench_gpu_ss.log 2>&1
  wait; stamp "kernels, single stream done"
}

gpus_23() {  # cluster routing and 2 fused goodput; then W1 + HF and the simulator's fidelity
  export CUDA_VISIBLE_DEVICES=2,3
  OUT="$OUT"/b timeout 330 python3 benchmarks/bench_pd_gpu.py --parts fused2,fused2_prefix,fused2_rr \
    --rates 4,5,6,7,8 --mix-requests 150 > "$OUT"/b/pd.log 2>&1; stamp "fused2 rc=$?"
  CUDA_VISIBLE_DEVICES=3 OUT="$OUT"/d timeout 270 python3 benchmarks/bench_gpu.py \
    --models llama-3.1-8b --parts w1,hf > "$OUT"/d/bench_gpu_w1.log 2>&1 &
  CUDA_VISIBLE_DEVICES=2 timeout 270 python3 benchmarks/bench_sim_fidelity.py --device cuda \
    --model dummy:llama-3.1-8b --rates 2,8,16 --num-prompts 40 --input-len 512 \
    --output-len 128 --vocab-size 32000 --batch-sizes 1,2,4,8,16,32,64 \
    --context-lens 128,512,1024 --prefill-lens 16,64,128,256,512,1024 --max-model-len 4096 \
    --result-dir "$OUT"/d > "$OUT"/d/fidelity.log 2>&1
  wait; stamp "W1, fidelity done"
}

nvidia-smi -L
gpus_01 &
gpus_23 &
wait
stamp "all done"
# The device tool brings back a limited number of files: one archive of everything.
tar -czf "$OUT"/all.tgz -C "$OUT" a b c d && rm -rf "$OUT"/a "$OUT"/b "$OUT"/c "$OUT"/d
