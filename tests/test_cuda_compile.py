"""Every kernel variant the public API launches compiles for CUDA (sm_90), even on a machine
without a GPU, with the runtime specialization a GPU launch would give it."""

import os
import subprocess
import sys
from pathlib import Path

import cuda_compile


def test_all_kernel_variants_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = Path(cuda_compile.__file__)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    compiled = [line for line in lines if line.startswith("compiled ")]
    assert lines[-1] == f"variants {len(compiled)}", result.stdout[-2000:]
    # every kernel of both files, in every dtype (float64 included)
    for name in (
        "_recon_loss_fwd_kernel", "_sample_and_kl_fwd_kernel", "_sample_and_kl_bwd_kernel"
    ):
        for dtype in ("*fp32", "*fp16", "*bf16", "*fp64"):
            assert any(
                f"compiled {name} " in line and f"'{dtype}'" in line for line in compiled
            ), (name, dtype)
    # the recon modes: probabilities, log-variance per row / broadcast / a float, mixed dtypes,
    # several programs per row with the per-row reduction
    recon = [line for line in compiled if line.startswith("compiled _recon_loss_fwd_kernel ")]
    for mode in (
        "'LIKELIHOOD': 3", "'V_MODE': 0", "'V_MODE': 1", "'V_MODE': 2", "'OUT': 1", "'DV_MODE': 2"
    ):
        assert any(mode in line for line in recon), mode
    assert any("'r_ptr': '*fp16'" in line and "'x_ptr': '*fp64'" in line for line in recon)
    # the objective's fused addition, into a total, rows of one program and rows of several;
    # a Gaussian without its constant
    for out in (0, 1, 2):
        assert any(f"'OUT': {out}" in line and "'ADD_KL': True" in line for line in recon), out
    assert any("'FULL': False" in line for line in recon)
