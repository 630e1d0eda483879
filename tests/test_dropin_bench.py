"""benchmarks.dropin: other people's VAE code with fastvae dropped in computes what the
original computes (loss and gradients, same inputs and noise), keeps fresh noise under
torch.compile, and its harness (plan, speedups, the CPU's stubbed host time) says what it
measured. The timed flow itself runs in tests/test_benchmarks.py's gpu_check smoke test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import dropin, dropin_checks, dropin_timing, fake_cuda
from benchmarks.thirdparty import Variant, antixk_vanilla_vae, pytorch_examples_vae

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
SMOKE = dropin.SMOKE_SIZES[0]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_every_variant_matches_its_original(backend):
    """Heads and whole steps, both codes, at the smoke size (the 2-layer VanillaVAE) on the
    PyTorch path and the Triton kernels (the interpreter here)."""
    rows = dropin_checks.run_checks(CPU, backend, sizes=[SMOKE])
    assert len(rows) == 2 * (3 + 2)  # head and step of every variant but the originals
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


def test_five_conv_vanilla_vae_matches_its_original():
    """The VanillaVAE of the 64 and 128 sizes (five convs), at twin widths."""
    size = dropin_checks.CHECK_SIZE
    model = dropin.build("antixk", "original", size, CPU, twin=True)
    assert len(model.encoder) == 5 and model.side == 1
    for variant in ("elbo_loss", "fused"):
        for check in (dropin_checks.check_head, dropin_checks.check_step):
            row = check("antixk", variant, size, CPU, "torch")
            assert row["ok"], row


def _scaled(variant: Variant, factor: float) -> Variant:
    def batch_loss(model, x):
        return factor * variant.batch_loss(model, x)

    def head(model, *args):
        z, loss = variant.head(model, *args)
        return z, factor * loss

    return variant._replace(batch_loss=batch_loss, head=head)


def test_checks_catch_a_wrong_swap(monkeypatch):
    """A loss off by 1e-4 relative fails both checks; a sample whose spread is exp(logvar)
    instead of exp(logvar / 2) fails the head's noise-free logvar gradient."""
    variants = dict(pytorch_examples_vae.VARIANTS)
    variants["elbo_loss"] = _scaled(variants["elbo_loss"], 1 + 1e-4)
    monkeypatch.setattr(pytorch_examples_vae, "VARIANTS", variants)
    for check in (dropin_checks.check_head, dropin_checks.check_step):
        row = check("pytorch_examples", "elbo_loss", SMOKE, CPU, "torch")
        assert not row["ok"] and row["max_abs_diff"]["loss"] > 0, row

    class WrongSpread(antixk_vanilla_vae.SwapVanillaVAE):
        def reparameterize(self, mu, logvar):
            return mu + torch.randn_like(mu) * torch.exp(logvar)

    right = dropin_checks.check_head("antixk", "elbo_loss", SMOKE, CPU, "torch")
    variants = dict(antixk_vanilla_vae.VARIANTS)
    variants["elbo_loss"] = variants["elbo_loss"]._replace(model=WrongSpread)
    monkeypatch.setattr(antixk_vanilla_vae, "VARIANTS", variants)
    row = dropin_checks.check_head("antixk", "elbo_loss", SMOKE, CPU, "torch")
    diffs = row["max_abs_diff"]
    # The spread is not in the loss: the same loss as the right swap (the same computation),
    # which is within rounding of the original's, not bitwise (two formulas of the KL).
    assert right["ok"] and diffs["loss"] == right["max_abs_diff"]["loss"]
    assert not row["ok"] and diffs["d_logvar_less_noise_term"] > 1e-3


def test_compiled_step_draws_fresh_noise():
    """torch.compile (AOT autograd, run eagerly: the graph inductor would get) of the swap's
    forward + loss on one batch, the parameters unchanged: every call changes the loss.
    fastvae's calls take the Triton kernels (the interpreter here): a Philox key traced as a
    constant would repeat the noise. (One compile costs seconds here; the CUDA test below
    replays CUDA graphs of both codes and the fused sampler.)"""
    res = dropin_checks.fresh_noise("pytorch_examples", "elbo_loss", SMOKE, CPU,
                                    backend="triton", compile_options={"backend": "aot_eager"})
    assert res["fresh"], res


def test_fresh_noise_check_sees_frozen_noise():
    """The control: the original with ``torch.randn_like`` answering one fixed eps gives the
    same loss every call, and the check says so."""
    eps = torch.randn(SMOKE.batch, SMOKE.latent)
    with dropin_checks.replayed_noise(eps):
        res = dropin_checks.fresh_noise("pytorch_examples", "original", SMOKE, CPU,
                                        compile_options={"backend": "aot_eager"})
    assert not res["fresh"] and max(res["relative_changes"]) <= dropin_checks.FRESH_RTOL, res


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["elbo_loss", "fused"])
def test_reduce_overhead_replays_draw_fresh_noise(variant):
    """Under ``torch.compile(mode="reduce-overhead")`` the third and later calls replay a CUDA
    graph: each replay must draw new noise, from ``fastvae.reparameterize`` and from the
    fused sampler. (gpu_check's drop-in part checks both codes at their own sizes.)"""
    res = dropin_checks.fresh_noise("pytorch_examples", variant, SMOKE, torch.device("cuda"))
    assert res["fresh"], res


def test_variants_are_callables_of_every_code():
    fns = dropin.variants(dropin.SIZES[0], "cpu", twin=True)
    expected = {f"{c}/{w}/{v}" for c, m in dropin.CODES.items() for w in ("head", "step")
                for v in m.VARIANTS}
    assert set(fns) == expected
    for key, fn in fns.items():
        out = fn()  # a step returns its loss, a head the gradients of mu, logvar and out
        for t in (out,) if "/step/" in key else out:
            assert torch.isfinite(t).all(), key


def test_twins_keep_the_layers():
    """A twin runs the same modules as its size, with tiny tensors; one pytorch/examples twin
    serves the three sizes, two VanillaVAE twins (two and five convs)."""
    for size in dropin.SIZES:
        for code in dropin.CODES:
            with torch.device("meta"):
                full = dropin.build(code, "original", size, "meta")
            twin = dropin.build(code, "original", dropin.twin_size(size, code), CPU, twin=True)
            kinds = [type(m).__name__ for m in full.modules()]
            assert kinds == [type(m).__name__ for m in twin.modules()], (code, size)
            assert sum(p.numel() for p in twin.parameters()) < 1e4


    assert len({dropin.twin_size(s, "pytorch_examples") for s in dropin.SIZES}) == 1
    assert len({dropin.twin_size(s, "antixk") for s in dropin.SIZES}) == 2


def test_plans_put_the_cheap_cells_first():
    for kind in ("full", "check", "smoke"):
        cells = dropin_timing.plan(kind)
        modes = [c.mode for c in cells]
        assert modes.index("bf16") > max(i for i, m in enumerate(modes) if m == "eager")
        assert len(set(cells)) == len(cells)
    check = dropin_timing.plan("check")
    assert {(c.code, c.size) for c in check if c.mode != "eager"} == set(
        dropin_timing.OWN_SIZE.items())
    assert {c.variant for c in check if c.mode == "compile" and c.what == "step"} == {
        "original", "elbo_loss"}
    assert len([c for c in dropin_timing.plan("full") if c.mode == "eager"]) == 3 * 2 * (4 + 3)


def test_speedups_and_table():
    rows = [{"code": "c", "size": "s", "what": "step", "variant": v, "mode": m, "time_ms": t}
            for v, m, t in (("original", "eager", 2.0), ("elbo_loss", "eager", 1.0),
                            ("original", "compile", 0.5), ("elbo_loss", "compile", 1.0))]
    rows.append({"code": "c", "size": "s", "what": "step", "variant": "original",
                 "mode": "bf16", "error": "RuntimeError: unsafe to autocast"})
    dropin_timing.add_speedups(rows)
    assert rows[1]["speedup_vs_original"] == 2.0 and rows[1]["speedup_vs_compiled_original"] == 0.5
    assert rows[3]["speedup_vs_original"] == 0.5 and rows[4]["speedup_vs_original"] is None
    text = dropin_timing.table({"rows": rows})
    assert "| c | s | step | eager | 2 | 1 (2.00x) |" in text and "| error |" in text


@pytest.mark.skipif(fake_cuda.compiler() is None, reason="the fake CUDA driver needs a C compiler")
def test_host_estimates_are_labelled():
    """The CPU figure, briefly, in a process without the interpreter (fastvae's launches go
    to the fake CUDA driver): every head and step at the 28 x 28 size's twin, labelled as an
    estimate; the fused swap launches fewer kernels than the original dispatches ops."""
    code = ("import json; from benchmarks import dropin, dropin_timing as t; "
            "print(json.dumps(t.host_times(dropin.SIZES[:1], rounds=2, log=lambda *a: None)))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 * (4 + 3)
    for r in rows:
        assert r["host_us"] > 0 and r["error"] is None
        assert r["timing"].startswith("ESTIMATE of H200 host time")
        assert r["twin_of"] == [dropin.SIZES[0].name]
        assert (r["launches"] > 0) == (r["variant"] != "original"), r
    launched = {(r["what"], r["variant"]): r["launches"] + r["torch_ops"] for r in rows
                if r["code"] == "pytorch_examples"}
    for what in ("head", "step"):
        assert launched[what, "fused"] < launched[what, "original"], launched


def test_results_file_names():
    assert dropin_timing.default_out({"device": "NVIDIA H200", "device_type": "cuda",
                                      "smoke": False}) == dropin.DROPIN_RESULTS / "nvidia-h200.json"
    cpu = dropin_timing.default_out({"device": "AMD EPYC", "device_type": "cpu", "smoke": False})
    assert cpu.name == "amd-epyc-cpu.json"
    assert str(dropin_timing.default_out({"device": "x", "device_type": "cpu", "smoke": True}
                                         )).startswith("runs")
