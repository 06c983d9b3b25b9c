#!/bin/bash
# One device call on four H100s of one host (the device tool's nvidia-h100-x4): the two-GPU
# measures run on GPUs 0-1 and 2-3 at the same time (single-GPU runs: gpu_session_x1.sh).
# Everything comes back as $OUT/all.tgz (the device tool returns a limited number of files).
# Run from the repository root:
#     PDSERVE_COMMIT=<hash> OUT=<dir> bash benchmarks/gpu_session_x4.sh
#     PART=ratio PDSERVE_COMMIT=<hash> OUT=<dir> bash benchmarks/gpu_session_x4.sh  # 3P1D vs 4 fused
# Needs PYTHONPATH with this tree and pyzmq/fastapi/uvicorn/pydantic/prometheus_client/py-spy.
set -u
mkdir -p "$OUT"/a "$OUT"/b
export PDSERVE_COMMIT=${PDSERVE_COMMIT:-unknown}
T0=$SECONDS
stamp() { echo "[$((SECONDS - T0)) s] $*"; }

gpus_01() {  # KV transfer, PD vs fused TTFT, PD goodput (py-spy on the workers at 6 req/s)
  export CUDA_VISIBLE_DEVICES=0,1
  timeout 70 python3 -m pytest -m gpu tests/kvxfer/test_cuda_ipc.py tests/kernels/test_copy_ranges.py \
    -q -p no:cacheprovider > "$OUT"/a/ipc_tests.log 2>&1; stamp "ipc tests rc=$?"
  timeout 90 python3 benchmarks/bench_kvxfer.py --skip-cpu --iters 8 \
    --out "$OUT"/a/kvxfer_gpu.json > "$OUT"/a/kvxfer.log 2>&1; stamp "kvxfer rc=$?"
  OUT="$OUT"/a timeout 420 python3 benchmarks/bench_pd_gpu.py --parts pd,fused1 \
    --rates 7,8,9,10,11 --mix-requests 150 --ttft-repeats 5 --diagnose 10 > "$OUT"/a/pd.log 2>&1
  stamp "pd,fused1 rc=$?"
}

gpus_23() {  # two fused instances: goodput; then ttft vs round-robin routing on shared prefixes
  export CUDA_VISIBLE_DEVICES=2,3
  OUT="$OUT"/b timeout 500 python3 benchmarks/bench_pd_gpu.py \
    --parts fused2,fused2_prefix,fused2_rr --rates 8,10,11,12 --mix-requests 150 \
    > "$OUT"/b/pd.log 2>&1; stamp "fused2 rc=$?"
}

ratio() {  # all four GPUs: 3 prefill + 1 decode against four fused workers (PART=ratio)
  OUT="$OUT"/a timeout 560 python3 benchmarks/bench_pd_gpu.py --parts fused4,pd3p1d \
    --rates ${RATES:-16,18,20,22,24,26} --mix-requests 150 > "$OUT"/a/pd.log 2>&1
  stamp "fused4,pd3p1d rc=$?"
}

nvidia-smi -L
if [ "${PART:-pairs}" = ratio ]; then
  ratio
else
  gpus_01 &
  gpus_23 &
  wait
fi
stamp "all done"
tail -n 12 "$OUT"/a/*.log "$OUT"/b/*.log 2>/dev/null
# The device tool brings back a limited number of files: one archive of everything.
tar -czf "$OUT"/all.tgz -C "$OUT" a b && rm -rf "$OUT"/a "$OUT"/b
