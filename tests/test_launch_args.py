"""The launchers pass kernel arguments positionally (keywords cost more host time than the rest
of a launcher): each launch, bound to the kernel's parameter names, must carry the value meant
for each name. Shapes are chosen so that the sizes and strides differ from one another."""

import pytest
import torch
from helpers import KERNEL_DEVICE

from fastvae.kernels import _recon_reduce
from fastvae.kernels import latent as latent_kernels
from fastvae.kernels import recon as recon_kernels
from fastvae.ops import latent as latent_op
from fastvae.ops import recon as recon_op

KERNELS = (recon_kernels._FWD, recon_kernels._BWD, recon_kernels._SCALE, latent_kernels._FWD,
           latent_kernels._BWD)


@pytest.fixture
def launched(monkeypatch):
    """Runs every launch for real (cached or not) and records it as
    ``(kernel name, {parameter: value})``."""
    seen = []
    for kernel in KERNELS:
        def launch(key, n_programs, args, num_warps=4, _kernel=kernel, _launch=kernel.launch):
            assert len(args) == len(_kernel.fn.arg_names), _kernel.fn.__name__
            seen.append((_kernel.fn.__name__, dict(zip(_kernel.fn.arg_names, args))))
            return _launch(key, n_programs, args, num_warps)

        monkeypatch.setattr(kernel, "launch", launch)
    return seen


def test_recon_launch_arguments(launched):
    g = torch.Generator().manual_seed(0)
    recon = torch.randn(3, 5, generator=g).to(KERNEL_DEVICE).requires_grad_(True)
    x = torch.rand(3, 9, generator=g).to(KERNEL_DEVICE)[:, :5]  # row stride 9, read in place
    recon_op.reconstruction_loss(
        recon, x, None, recon_op.Options(0.0, "bernoulli", "batchmean", True, True, False)
    ).mul(2.0).backward()
    w = torch.tensor([1.0, 2.0, 3.0], device=KERNEL_DEVICE)  # grad_output per row: stride 1
    (recon_op.reconstruction_loss(
        recon, x, None, recon_op.Options(0.0, "mse", "none", True, True, False)
    ) * w).sum().backward()
    names = [n for n, _ in launched]
    assert names == ["_recon_loss_fwd_kernel", "_recon_loss_scale_grad_kernel",
                     "_recon_loss_fwd_kernel", "_recon_loss_bwd_kernel"]
    fwd, scale, fwd_rows, bwd = (a for _, a in launched)
    assert fwd["r_ptr"] is recon and fwd["x_ptr"] is x and fwd["v_ptr"] is recon
    assert fwd["dr_ptr"].shape == (3, 5) and fwd["dr_ptr"] is not recon
    assert (fwd["D"], fwd["n_chunks"], fwd["n_rows"]) == (5, 1, 3)
    assert (fwd["r_row_stride"], fwd["x_row_stride"], fwd["v_row_stride"],
            fwd["dr_row_stride"]) == (5, 9, 0, 5)
    assert (fwd["divisor"], fwd["logvar_value"], fwd["LIKELIHOOD"]) == (3, 0.0, 0)
    assert (fwd["V_MODE"], fwd["DV_MODE"], fwd["WRITE_DR"], fwd["OUT"],
            fwd["F64"]) == (2, 0, True, 2, False)
    assert fwd["EVEN_D"] == (5 % fwd["BLOCK_D"] == 0) and fwd["RBLOCK"] >= fwd["BLOCK_D"]
    # x's row stride 9 keeps the row tiles: 3 programs, their partials and one group's sum
    assert (fwd["FLAT"], fwd["n_programs"], fwd["GROUP"]) == (False, 3, _recon_reduce.MIN_GROUP)
    assert fwd["partial_ptr"].shape == (4,) and fwd["out_ptr"].shape == ()
    assert fwd["counters_ptr"] is recon_kernels._COUNTERS[recon.device]
    assert scale["grad_ptr"] is fwd["dr_ptr"] and scale["g_ptr"].shape == () and scale["n"] == 15
    assert scale["BLOCK"] == recon_kernels._SCALE_BLOCK
    assert (fwd_rows["LIKELIHOOD"], fwd_rows["OUT"], fwd_rows["WRITE_DR"],
            fwd_rows["divisor"]) == (1, 0, False, 1)
    assert bwd["r_ptr"] is recon and bwd["x_ptr"] is x and bwd["g_ptr"].shape == (3,)
    assert (bwd["D"], bwd["n_chunks"], bwd["r_row_stride"], bwd["x_row_stride"],
            bwd["dr_row_stride"]) == (5, 1, 5, 9, 5)
    assert (bwd["g_stride"], bwd["LIKELIHOOD"], bwd["WRITE_DR"], bwd["DV_MODE"]) == (1, 1, True, 0)


def test_latent_launch_arguments(launched):
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(3, 14, generator=g).to(KERNEL_DEVICE).requires_grad_(True)
    mu, logvar = enc.chunk(2, dim=1)  # (3, 7) views with row stride 14, read in place
    z, kl = latent_op.sample_and_kl(mu, logvar, None, 1, True, True, "batchmean")
    torch.autograd.grad((kl, z), [enc],
                        (torch.tensor(2.0, device=KERNEL_DEVICE), torch.ones_like(z)))
    assert [n for n, _ in launched] == ["_sample_and_kl_fwd_kernel", "_sample_and_kl_bwd_kernel"]
    fwd, bwd = (a for _, a in launched)
    in_memory = not mu.is_cuda  # the CPU generator's key is an int64 tensor; CUDA's host ints
    for a in (fwd, bwd):
        assert a["mu_ptr"] is mu and a["lv_ptr"] is logvar
        assert (a["B"], a["L"], a["N"], a["mu_stride"], a["lv_stride"],
                a["K"]) == (3, 7, 21, 14, 14, 1)
        assert (a["div"], a["STRIDED"], a["KEY_IN_MEMORY"],
                a["BLOCK"]) == (3, True, in_memory, latent_kernels._FLAT_BLOCK)
        assert isinstance(a["seed"], int) and isinstance(a["offset"], int)
    assert fwd["z_ptr"] is z and fwd["kl_ptr"] is kl and fwd["partials_ptr"] is kl  # one program
    assert (fwd["SAMPLE"], fwd["KL"], fwd["FLAT"], fwd["BLOCK_B"], fwd["BLOCK_L"],
            fwd["P_BLOCK"]) == (True, 2, True, 1, 1, 1)
    assert fwd["ticket_ptr"].dtype == torch.int32
    assert bwd["dz_ptr"].shape == (3, 7) and bwd["dkl_ptr"].shape == () and bwd["dkl_stride"] == 0
    assert bwd["dmu_ptr"].shape == (3, 7) and bwd["dlv_ptr"].shape == (3, 7)
    assert (bwd["HAS_DZ"], bwd["HAS_DKL"], bwd["DKL_PER_ROW"]) == (True, True, False)


def test_elbo_launch_arguments(launched):
    """The fused objective hands the KL and beta to the recon kernel, and beta to the latent
    backward as the KL's weight."""
    import fastvae

    g = torch.Generator().manual_seed(2)
    recon = torch.randn(4, 6, generator=g).to(KERNEL_DEVICE).requires_grad_(True)
    x = torch.rand(4, 6, generator=g).to(KERNEL_DEVICE)
    mu, logvar = (torch.randn(4, 3, generator=g).to(KERNEL_DEVICE).requires_grad_(True)
                  for _ in range(2))
    out = fastvae.elbo_loss(recon, x, mu, logvar, beta=0.25, reduction="none", kl_reduction="sum",
                            likelihood="gaussian", recon_logvar=-1.5, full=False, backend="triton")
    out.loss.sum().backward()
    assert [n for n, _ in launched] == ["_sample_and_kl_fwd_kernel", "_recon_loss_fwd_kernel",
                                        "_recon_loss_bwd_kernel", "_sample_and_kl_bwd_kernel"]
    kl_fwd, fwd, bwd, kl_bwd = (a for _, a in launched)
    assert (kl_fwd["SAMPLE"], kl_fwd["KL"]) == (False, 2) and kl_fwd["kl_ptr"] is out.kl
    assert fwd["kl_ptr"] is out.kl and fwd["kl_stride"] == 0 and fwd["elbo_ptr"] is out.loss
    assert (fwd["out_ptr"] is out.recon
            and (fwd["beta"], fwd["ADD_KL"], fwd["OUT"]) == (0.25, True, 0))
    assert (fwd["FULL"], fwd["V_MODE"], fwd["logvar_value"],
            fwd["WRITE_DR"]) == (False, 2, -1.5, False)
    assert bwd["g_ptr"].shape == (4,)
    assert (kl_bwd["kl_weight"], kl_bwd["HAS_DZ"], kl_bwd["HAS_DKL"],
            kl_bwd["dkl_stride"]) == (0.25, False, True, 0)
