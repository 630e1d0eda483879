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
        common = {"mu_ptr": f"*{dt}", "lv_ptr": f"*{dt}", "seed_ptr": "*i64"}
        for sample, kl, reduce in ((True, True, False), (True, True, True), (True, False, False),
                                   (False, True, False), (False, True, True)):
            sig = {**common, "z_ptr": f"*{dt}", "kl_ptr": f"*{acc}", "B": "i32", "L": "i32",
                   "K": "i32", "sample_stride": "i64", "kl_div": "i32"}
            yield latent._sample_and_kl_fwd_kernel, sig, {"SAMPLE": sample, "KL": kl, "REDUCE": reduce, "BLOCK_B": 16, "BLOCK_L": 128}
        for dz, dkl in ((True, True), (True, False), (False, True)):
            sig = {**common, "dz_ptr": f"*{dt}", "dkl_ptr": f"*{acc}", "dmu_ptr": f"*{dt}",
                   "dlv_ptr": f"*{dt}", "B": "i32", "L": "i32", "K": "i32", "sample_stride": "i64",
                   "dkl_stride": "i32", "kl_div": "i32"}
            yield latent._sample_and_kl_bwd_kernel, sig, {"HAS_DZ": dz, "HAS_DKL": dkl, "BLOCK_B": 16, "BLOCK_L": 128}
        io = {"r_ptr": f"*{dt}", "x_ptr": f"*{dt}", "v_ptr": f"*{dt}", "dr_ptr": f"*{dt}", "dv_ptr": f"*{dt}"}
        rows = {"D": "i32", "n_chunks": "i32", "r_row_stride": "i32", "x_row_stride": "i32",
                "v_row_stride": "i32", "dr_row_stride": "i32", "dv_row_stride": "i32", "logvar_value": "fp32"}
        cases = [(lik, recon.V_ELEMENTS.value, dv) for lik in recon.LIKELIHOOD_CODES.values()
                 for dv in ((recon.DV_ELEMENTS.value, recon.DV_NONE.value) if lik == 2 else (recon.DV_NONE.value,))]
        cases += [(2, recon.V_ROW.value, recon.DV_PARTIALS.value), (2, recon.V_SCALAR.value, recon.DV_NONE.value)]
        # every likelihood / log-variance mode masked with the in-kernel total; the other output
        # modes and the unmasked form once (bernoulli)
        outs = [(c, recon.OUT_TOTAL.value, False) for c in cases]
        outs += [(cases[0], out, even) for out, even in ((recon.OUT_ROWS_DIRECT.value, False),
                 (recon.OUT_ROWS.value, False), (recon.OUT_TOTAL.value, True))]
        for (lik, v_mode, dv_mode), out, even in outs:
            flags = {"LIKELIHOOD": lik, "V_MODE": v_mode, "DV_MODE": dv_mode, "WRITE_DR": True,
                     "F64": dt == "fp64", "BLOCK_D": 4096, "EVEN_D": even}
            sig = {**io, "partial_ptr": f"*{acc}", "ticket_ptr": "*i32", "out_ptr": f"*{acc}", **rows,
                   "n_programs": "i32", "divisor": "i32"}
            yield recon._recon_loss_fwd_kernel, sig, {**flags, "OUT": out, "RBLOCK": 4096}
            if out == recon.OUT_TOTAL.value and not even:
                sig = {**io, "g_ptr": f"*{acc}", **rows, "g_stride": "i32"}
                yield recon._recon_loss_bwd_kernel, sig, flags
        yield recon._recon_loss_scale_grad_kernel, {"g_ptr": f"*{acc}", "grad_ptr": f"*{dt}", "n": "i64"}, {"BLOCK": 4096}


def main():
    for fn, sig, consts in variants():
        sig = {**sig, **{name: "constexpr" for name in consts}}
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET)
        assert compiled.asm["cubin"], fn.__name__
        print("compiled", fn.__name__, next(iter(sig.values())), consts, flush=True)


if __name__ == "__main__":
    main()
