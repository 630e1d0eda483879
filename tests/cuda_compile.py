"""Compile every Triton kernel variant for an H100 (sm_90) without a GPU.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces
``@triton.jit`` functions by plain Python ones, which skips everything the GPU compiler checks:
constexpr globals, dtype rules, lowering of fp64 math). Prints one line per compiled variant.
"""

import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastvae.kernels import latent, recon

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": "fp32", "fp16": "fp32", "bf16": "fp32", "fp64": "fp64"}  # input -> loss dtype


def variants():
    for dt, acc in DTYPES.items():
        common = {"mu_ptr": f"*{dt}", "lv_ptr": f"*{dt}", "key_ptr": "*i64"}
        ints = {"seed": "i64", "offset": "i64", "B": "i32", "L": "i32", "N": "i32", "mu_stride": "i32",
                "lv_stride": "i32", "K": "i32"}
        for strided, in_memory in ((False, False), (True, True)):
            common_flags = {"STRIDED": strided, "KEY_IN_MEMORY": in_memory, "FAST_EXP": True, "BLOCK": 2048}
            for sample, kl in ((True, 2), (True, 0), (False, 2), (True, 1), (False, 1)):
                flat = kl != 1  # per-row KLs run on the row tile
                blocks = {**common_flags, "FLAT": flat, "BLOCK_B": 16, "BLOCK_L": 32}
                sig = {**common, "z_ptr": f"*{dt}", "kl_ptr": f"*{acc}", "partials_ptr": f"*{acc}",
                       "ticket_ptr": "*i32", **ints, "div": "i32"}
                yield latent._sample_and_kl_fwd_kernel, sig, {"SAMPLE": sample, "KL": kl, **blocks, "P_BLOCK": 32}
            for dz, dkl, per_row in ((True, True, False), (True, False, False), (False, True, True)):
                sig = {**common, "dz_ptr": f"*{dt}", "dkl_ptr": f"*{acc}", "dmu_ptr": f"*{dt}",
                       "dlv_ptr": f"*{dt}", **ints, "dkl_stride": "i32", "div": "i32"}
                yield latent._sample_and_kl_bwd_kernel, sig, {"HAS_DZ": dz, "HAS_DKL": dkl, "DKL_PER_ROW": per_row, **common_flags}
        io = {"r_ptr": f"*{dt}", "x_ptr": f"*{dt}", "v_ptr": f"*{dt}"}
        for lik, write in itertools.product(recon.LIKELIHOOD_CODES.values(), (True, False)):
            flags = {"LIKELIHOOD": lik, "WRITE_DR": write, "WRITE_DV": write and lik == 2, "BLOCK_D": 4096}
            sig = {**io, "partial_ptr": f"*{acc}", "dr_ptr": f"*{dt}", "dv_ptr": f"*{dt}",
                   "D": "i32", "n_chunks": "i32", "grad_div": "i32"}
            yield recon._recon_loss_fwd_kernel, sig, flags
            if write:
                sig = {**io, "g_ptr": f"*{acc}", "dr_ptr": f"*{dt}", "dv_ptr": f"*{dt}",
                       "D": "i32", "n_chunks": "i32", "g_stride": "i32"}
                yield recon._recon_loss_bwd_kernel, sig, flags


def main():
    for fn, sig, consts in variants():
        sig = {**sig, **{name: "constexpr" for name in consts}}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET)
        assert compiled.asm["cubin"], fn.__name__
        print("compiled", fn.__name__, sig["r_ptr" if "r_ptr" in sig else "mu_ptr"], consts, flush=True)


if __name__ == "__main__":
    main()
