"""Compile the Triton kernels for sm_90 (H100) on a machine without a GPU, and check the PTX.

The interpreter (TRITON_INTERPRET=1) runs the kernels' logic but never the GPU compiler, so an
error only the compiler sees (a construct it rejects, registers spilled, a memory-ordering
instruction missing) would first show up on the H100. Run without TRITON_INTERPRET:

    python tests/kernels/sm90_compile.py      # prints one line per kernel; exit 1 on a failure

Launch-time hints are given as Triton gives them at run time (pointers and strides divisible by
16), so the loads are vectorised / pipelined as they will be.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pdserve.model.ops import triton_attention, triton_gemv, triton_kv_store  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_sm90(fn, types: dict[str, str], consts: dict, aligned: list[str], **options):
    """fn's arguments: pointer/scalar types (default i32), constexpr values, 16-divisible args."""
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": 4, "num_stages": 3, **options})


def spill_bytes(kernel, workdir: str) -> int:
    """Bytes of register spill stores ptxas reports for the kernel's PTX."""
    ptx_path = os.path.join(workdir, "kernel.ptx")
    with open(ptx_path, "w") as f:
        f.write(kernel.asm["ptx"])
    out = subprocess.run([PTXAS, "-arch=sm_90a", "-v", ptx_path, "-o", ptx_path + ".cubin"],
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", out))


def rotary_store_kv() -> list[str]:
    types = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "q_out_ptr", "kv_ptr")}
    types.update(slot_ptr="*i64", pos_ptr="*i64", cos_sin_ptr="*fp32")
    consts = {"HALF": 64, "BLOCK_SIZE": 16, "BLOCK_H": 32, "BLOCK_HALF": 64}
    compile_sm90(triton_kv_store._rotary_store_kv_kernel, types, consts, [*types])
    return []


def gemv(workdir: str) -> list[str]:
    """The default configs of the 8B shapes: compile, and no register spills."""
    types = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16"}
    aligned = [*types, "stride_xm", "stride_wn", "stride_ym"]
    failures = []
    for rows, n, k, silu in [(1, 6144, 4096, False), (1, 4096, 14336, True),
                             (8, 4096, 14336, True), (4, 128256, 4096, False)]:  # fmt: skip
        cfg = triton_gemv.default_config(rows, n, k, num_sms=132)
        use_dot = bool(cfg["use_dot"])
        consts = {
            "K": k, "HAS_BIAS": False, "SILU_MUL": silu, "USE_DOT": use_dot,
            "ACC_WIDE": not use_dot, "BLOCK_M": 16 if use_dot else 1,
            "BLOCK_N": cfg["block_n"], "BLOCK_K": cfg["block_k"], "EVEN_N": True, "EVEN_K": True,
            "NUM_STAGES": cfg["num_stages"], "DOT_FP32": False, "PRECISION": "tf32",
        }  # fmt: skip
        kernel = compile_sm90(triton_gemv._gemv_kernel, types, consts, aligned,
                              num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])  # fmt: skip
        spilled = spill_bytes(kernel, workdir)
        if spilled:
            failures.append(f"gemv rows={rows} {n}x{k} silu={silu} {cfg}: {spilled} B spilled")
    return failures


def gemv_rotary_store_kv(workdir: str) -> list[str]:
    """The 8B qkv projection with rope + KV store as its epilogue (1 row, 4 rows): no spills."""
    types = {n: "*bf16" for n in ("x_ptr", "w_ptr", "b_ptr", "q_out_ptr", "kv_ptr")}
    types.update(slot_ptr="*i64", pos_ptr="*i64", cos_sin_ptr="*fp32")
    aligned = [*types, "stride_xm", "stride_wn", "stride_qot", "stride_qoh"]
    failures = []
    for rows in (1, 4):
        cfg = triton_gemv.default_config(rows, 6144, 4096, num_sms=132)
        use_dot = bool(cfg["use_dot"])
        consts = {
            "K": 4096, "HEAD_DIM": 128, "HALF": 64,
            "BLOCK_J": min(max(cfg["block_n"] // 2, 16 if use_dot else 1), 64),
            "BLOCK_SIZE": 16, "HAS_BIAS": False, "USE_DOT": use_dot,
            "BLOCK_M": 16 if use_dot else 1, "BLOCK_K": cfg["block_k"], "EVEN_K": True,
            "NUM_STAGES": cfg["num_stages"], "DOT_FP32": False, "PRECISION": "tf32",
        }  # fmt: skip
        kernel = compile_sm90(triton_gemv._gemv_rope_store_kernel, types, consts, aligned,
                              num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])  # fmt: skip
        spilled = spill_bytes(kernel, workdir)
        if spilled:
            failures.append(f"gemv_rotary_store_kv rows={rows} {cfg}: {spilled} B spilled")
    return failures


def attention_fused_combine() -> list[str]:
    """Split-K with the in-kernel combine: one acq_rel atomic, after a CTA barrier that follows
    the partials' stores; the partials are re-read past L1 (.cg)."""
    types = {"q_ptr": "*bf16", "kv_ptr": "*bf16", "out_ptr": "*bf16", "part_acc_ptr": "*fp32",
             "part_ml_ptr": "*fp32", "counter_ptr": "*i32", "query_start_loc_ptr": "*i32",
             "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32", "qk_scale": "fp32"}  # fmt: skip
    consts = {
        "GROUP": 4, "HEADS_PAD": 4, "BLOCK_Q": 4, "BLOCK_M": 16, "BLOCK_N": 128,
        "BLOCK_SIZE": 16, "HEAD_DIM": 128, "BLOCK_D": 128, "NUM_SPLITS": 4, "NUM_STAGES": 3,
        "INTERPRET": False, "PRECISION": "tf32", "FUSED_REDUCE": True,
    }  # fmt: skip
    aligned = [n for n in types if n.endswith("_ptr")]
    ptx = compile_sm90(triton_attention._attn_kernel, types, consts, aligned).asm["ptx"]
    failures = []
    atoms = [m.start() for m in re.finditer(r"atom\.global\.gpu\.acq_rel\.add", ptx)]
    if len(atoms) != 1:
        failures.append(f"attention: {len(atoms)} acq_rel atomics, want 1")
    else:
        before = ptx[: atoms[0]]
        last_store = max(m.start() for m in re.finditer(r"st\.global", before))
        if "bar.sync" not in before[last_store:]:
            failures.append("attention: no bar.sync between the partials' stores and the atomic")
    if not re.search(r"ld\.global\.cg", ptx):
        failures.append("attention: the combine's loads are not .cg")
    return failures


def main() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        failures = rotary_store_kv() + gemv(workdir) + gemv_rotary_store_kv(workdir)
        failures += attention_fused_combine()
    for line in failures:
        print("FAIL", line)
    print("sm_90 compile:", "ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
