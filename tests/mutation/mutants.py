"""The mutants of tests/mutation/run.py, and the test files that cover each module.

A mutant is one textual change to one file: ``old`` (which must occur exactly once in the
file) becomes ``new``. ``gpu`` marks a mutant that only code running on a CUDA device can
notice (the CPU run reports it apart, not in the score). Kinds: an operator flipped, a
constant perturbed, a condition negated or moved, an argument dropped or swapped, an offset in
int32, a seed ignored, a state not restored.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    what: str
    gpu: bool = False


# Test files run for a mutant of each module, fastest and most specific first (pytest stops
# at the first failure).
TESTS = {
    "kernels/_math.py": [
        "test_survivors_ops.py", "test_kernels_latent.py", "test_recon_features.py",
        "test_kernels_recon.py",
    ],
    "kernels/latent.py": [
        "test_survivors_ops.py", "test_kernels_latent.py", "test_elbo_op.py",
        "test_functional.py",
    ],
    "kernels/recon.py": [
        "test_survivors_ops.py", "test_int64_offsets.py", "test_recon_features.py",
        "test_kernels_recon.py", "test_elbo_op.py",
    ],
    "fastvae/functional.py": [
        "test_survivors_ops.py", "test_functional.py", "test_elbo_op.py",
        "test_kernels_latent.py", "test_kernels_recon.py", "test_bad_input.py",
    ],
    "fastvae/ops/latent.py": [
        "test_survivors_ops.py", "test_kernels_latent.py", "test_elbo_op.py",
        "test_functional.py",
    ],
    "fastvae/ops/recon.py": [
        "test_survivors_ops.py", "test_recon_features.py", "test_kernels_recon.py",
        "test_elbo_op.py",
    ],
    "fastvae/ops/elbo.py": ["test_elbo_op.py", "test_functional.py", "test_survivors_ops.py"],
    "fastvae/reference.py": [
        "test_reference.py", "test_survivors_ops.py", "test_torch_backend.py",
        "test_kernels_latent.py", "test_kernels_recon.py", "test_recon_features.py",
    ],
    "fastvae/data/batches.py": [
        "test_survivors_training.py", "test_data.py", "test_distributed.py", "test_engine.py",
    ],
    "fastvae/train/engine.py": [
        "test_engine.py", "test_survivors_training.py", "test_train.py", "test_distributed.py",
    ],
    "fastvae/train/checkpoint.py": [
        "test_survivors_training.py", "test_train.py", "test_resume.py",
    ],
    "fastvae/train/loop.py": ["test_survivors_training.py", "test_train.py", "test_resume.py"],
    "fastvae/models/iwae.py": ["test_evaluation.py", "test_models.py"],
}

_M = Mutant
MUTANTS = [
    # ---------------------------------------------------------------- kernels/_math.py
    _M("kl-series-1/7!", "kernels/_math.py", "1.0 / 5040.0", "1.0 / 5400.0",
       "constant: the float64 series' 1/7! written 1/5400"),
    _M("cos-coefficient", "kernels/_math.py", "cos_x * s2 + 0.04165501892566681",
       "cos_x * s2 + 0.04165918442755938", "constant: a cos coefficient 1e-4 relative off"),
    _M("log1p-coefficient", "kernels/_math.py", "q * t - 0.49999502301216125",
       "q * t - 0.49994502350986003", "constant: a log1p coefficient 1e-4 relative off"),
    _M("ln-u-exponent", "kernels/_math.py", "((k - 24.0) * _LN2", "((k - 23.0) * _LN2",
       "constant: Box-Muller's exponent offset"),
    _M("cos-quadrant", "kernels/_math.py", "c = tl.where(((q + 1) & 2) != 0, -c, c)",
       "c = tl.where((q & 2) != 0, -c, c)", "condition: the cos sign's quadrant"),
    _M("philox-offset-high-word", "kernels/_math.py", "o_hi = (off >> 32)", "o_hi = (off >> 31)",
       "operator: the counter offset's high word"),
    _M("per-element-pair", "kernels/_math.py", "first = j < 2", "first = j <= 2",
       "condition: the per-element noise takes the wrong Box-Muller pair"),
    _M("expm1-sign", "kernels/_math.py", "tl.where(small, s + phi_series, ev - 1.0)",
       "tl.where(small, s - phi_series, ev - 1.0)", "operator: expm1 from its series"),
    _M("fp32-series-range", "kernels/_math.py", "small = tl.abs(v) < 1.0",
       "small = tl.abs(v) < 0.1", "constant: fp32 phi's series range shrunk"),
    # ---------------------------------------------------------------- kernels/latent.py
    _M("fp16-noise-halves", "kernels/latent.py", "tl.reshape(tl.join(v0, v1), [BLOCK])",
       "tl.reshape(tl.join(v1, v0), [BLOCK])", "argument swap: fp16 noise halves joined"),
    _M("fp32-noise-order", "kernels/latent.py", "tl.join(tl.join(n0, n2), tl.join(n1, n3))",
       "tl.join(tl.join(n0, n1), tl.join(n2, n3))", "argument swap: fp32 noise order"),
    _M("kl-ticket-last", "kernels/latent.py", "if ticket == n_programs - 1:",
       "if ticket == n_programs - 2:", "constant: the last program's ticket"),
    _M("strided-row-column", "kernels/latent.py", "+ (q * mu_stride + col)", "+ (q * L + col)",
       "argument: a strided row's stride"),
    _M("dlogvar-std", "kernels/latent.py", "dlv += (0.5 * std) * dz_eps",
       "dlv += (0.5 * std * std) * dz_eps", "operator: d logvar's exp(lv / 2)"),
    _M("sample-k-noise", "kernels/latent.py", "dz_eps += dz * _noise(seed, offset + k,",
       "dz_eps += dz * _noise(seed, offset + k - 1,", "argument: backward noise of k > 0"),
    _M("dmu-kl-term", "kernels/latent.py", "dmu = g * mu", "dmu = g * lv",
       "argument: the KL's d mu"),
    _M("chunk-views-copied", "kernels/latent.py", "if mu.shape[1] + _FLAT_BLOCK < 1 << 24:",
       "if mu.shape[1] + _FLAT_BLOCK > 1 << 24:", "condition: strided rows copied"),
    _M("dkl-per-row", "kernels/latent.py", "dkl_stride != 0,  # DKL_PER_ROW",
       "dkl_stride == 0,  # DKL_PER_ROW", "condition: per-row KL gradient"),
    # ---------------------------------------------------------------- kernels/recon.py
    _M("recon-row-offset-int32", "kernels/recon.py", "return row.to(tl.int64), start, cols, mask",
       "return row, start, cols, mask", "int32: the row tile's row offset"),
    _M("recon-flat-offset-int32", "kernels/recon.py", "at = pid.to(tl.int64) * BLOCK_D",
       "at = pid * BLOCK_D", "int32: the flat block's offset"),
    _M("scale-offset-int32", "kernels/recon.py", "offs = tl.program_id(0).to(tl.int64) * BLOCK",
       "offs = tl.program_id(0) * BLOCK", "int32: the gradient scale's offsets"),
    _M("row-logvar-first-chunk", "kernels/recon.py", "buf = buf.view(B, n_chunks).sum(1)",
       "buf = buf.view(B, n_chunks)[:, 0]", "argument: a row's logvar gradient from chunk 0"),
    _M("dv-partials-mask", "kernels/recon.py", "if not EVEN:\n            dv = tl.where",
       "if EVEN:\n            dv = tl.where", "condition: masked lanes in the logvar sums"),
    _M("ticket-group-size", "kernels/recon.py", "if ticket == size - 1:",
       "if ticket == GROUP - 1:", "argument: the last ticket of a partial group"),
    _M("row-partials-index", "kernels/recon.py", "partial_ptr + c * n_rows + rows",
       "partial_ptr + c * n_chunks + rows", "argument: per-row partials' index"),
    _M("bernoulli-sign", "kernels/recon.py", "tl.where(pos, 1.0 - x, -x)",
       "tl.where(pos, 1.0 - x, x)", "operator: Bernoulli loss for l < 0"),
    _M("bce-grad-clamp", "kernels/recon.py", "tl.maximum(r * q, 1e-12,", "tl.maximum(r * q, 1e-6,",
       "constant: BCE gradient's clamp"),
    _M("gaussian-dv-sign", "kernels/recon.py", "dv = 0.5 - 0.5 * scaled",
       "dv = 0.5 + 0.5 * scaled", "operator: d loss / d logvar"),
    _M("half-log-2pi", "kernels/recon.py", "tl.constexpr(0.9189385332046727)",
       "tl.constexpr(0.9189477225900048)", "constant: log(2 pi) / 2, 1e-5 relative off"),
    _M("mse-grad", "kernels/recon.py", "dr = 2.0 * diff", "dr = diff", "constant: MSE gradient"),
    _M("flat-grad-scale", "kernels/recon.py", "dv_ptr, dr * scale, dv * scale,",
       "dv_ptr, dr, dv * scale,", "argument dropped: the divisor of flat gradients"),
    _M("scale-kernel-condition", "kernels/recon.py", "if g != 1.0:", "if g == 1.0:",
       "condition: the gradient scale skips the wrong case"),
    _M("chunks-per-row", "kernels/recon.py", "n_chunks = -(-features // block_d)",
       "n_chunks = max(features // block_d, 1)", "operator: programs per row rounded down"),
    _M("x-feature-order", "kernels/recon.py",
       "if _dense_rows(t.shape, t.stride()) and _feature_key(t.shape, t.stride()) == "
       "_feature_key(like.shape, like.stride()):",
       "if _dense_rows(t.shape, t.stride()):", "condition dropped: x's feature order"),
    _M("bwd-dv-row-stride", "kernels/recon.py",
       "dv_row_stride = 0 if logvar.mode == V_ROW.value else D",
       "dv_row_stride = 0 if logvar.mode == V_ROW.value else 0",
       "argument: backward logvar-gradient rows"),
    _M("fast-exp-constant", "kernels/recon.py", "inv_var = _ex2_ftz(v * -1.4426950408889634)",
       "inv_var = _ex2_ftz(v * -1.4427)", "constant: fast exp(-v) (compiled for a GPU only)",
       gpu=True),
    # ---------------------------------------------------------------- fastvae/functional.py
    _M("logvar-grad-from-recon", "fastvae/functional.py",
       "logvar is not None and logvar.requires_grad", "logvar is not None and recon.requires_grad",
       "argument: whether the logvar needs a gradient read from recon"),
    _M("reparameterize-generator", "fastvae/functional.py",
       "latent_op.sample_and_kl(mu, logvar, generator, n_samples, True, False",
       "latent_op.sample_and_kl(mu, logvar, None, n_samples, True, False",
       "seed ignored: reparameterize's generator"),
    _M("sample-and-kl-generator", "fastvae/functional.py",
       "latent_op.sample_and_kl(mu, logvar, generator, 1, True, True, reduction)",
       "latent_op.sample_and_kl(mu, logvar, None, 1, True, True, reduction)",
       "seed ignored: sample_and_kl's generator"),
    _M("elbo-kl-reduction", "fastvae/functional.py",
       "elbo_op.Options(rec_options, float(beta), kl_reduction)",
       "elbo_op.Options(rec_options, float(beta), reduction)", "argument: the KL's reduction"),
    _M("auto-backend", "fastvae/functional.py", 'return "triton" if t.is_cuda else "torch"',
       'return "torch" if t.is_cuda else "triton"', "condition: the auto backend"),
    # ---------------------------------------------------------------- fastvae/ops
    _M("kl-divisor-args", "fastvae/ops/latent.py", "divisor(reduction, B, numel),\n    )",
       "divisor(reduction, numel, B),\n    )", "argument swap: the KL's divisor"),
    _M("host-key-dropped", "fastvae/ops/latent.py", "ctx.host_key if key is None else key",
       "key", "state: a host Philox key not saved for backward (CUDA only)", gpu=True),
    _M("host-key-advance", "fastvae/ops/latent.py", "generator.set_offset(offset + 4 * n_samples)",
       "generator.set_offset(offset + 4)", "state: the generator advanced for one sample only"),
    _M("scaled-out-of-place", "fastvae/ops/recon.py",
       "return grad * grad_output.to(grad.dtype)", "return grad",
       "argument dropped: grad_output of a kept gradient"),
    _M("target-grad-sign", "fastvae/ops/recon.py", "d = -r\n", "d = r\n",
       "operator: the Bernoulli target gradient"),
    _M("elbo-beta-dropped", "fastvae/ops/elbo.py", "_weight(g * ctx.beta, g_kl, kl_shape)",
       "_weight(g, g_kl, kl_shape)", "argument dropped: beta in the KL's gradient"),
    _M("elbo-fused-condition", "fastvae/ops/elbo.py",
       'return (rec_reduction == "none" or kl_reduction != "none")',
       'return (rec_reduction == "none" or kl_reduction == "none")',
       "condition: when the kernel adds beta * kl"),
    # ---------------------------------------------------------------- fastvae/reference.py
    _M("reference-series-terms", "fastvae/reference.py", "for n in range(9, 1, -1):",
       "for n in range(9, 2, -1):", "constant: the reference series loses its v^2 term"),
    _M("reference-mean-divisor", "fastvae/reference.py",
       '(numel if reduction == "mean" else per_sample.shape[0])',
       '(per_sample.shape[0] if reduction == "mean" else numel)', "condition: mean vs batchmean"),
    _M("reference-full", "fastvae/reference.py", "(LOG_2PI if full else 0.0)",
       "(LOG_2PI if not full else 0.0)", "condition: the Gaussian constant"),
    _M("reference-std", "fastvae/reference.py", "torch.exp(0.5 * logvar.to(acc))",
       "torch.exp(logvar.to(acc))", "constant: the sample's standard deviation"),
    _M("reference-bce-eps", "fastvae/reference.py", "BCE_GRAD_EPS = 1e-12", "BCE_GRAD_EPS = 1e-6",
       "constant: BCE gradient's clamp"),
    # ---------------------------------------------------------------- fastvae/data/batches.py
    _M("image-batches-seed", "fastvae/data/batches.py",
       "torch.Generator(device=images.device).manual_seed(seed)",
       "torch.Generator(device=images.device).manual_seed(0)",
       "seed ignored: ImageBatches' order"),
    _M("sampler-seed", "fastvae/data/batches.py", "seed=seed, drop_last=True,",
       "seed=0, drop_last=True,", "seed ignored: the distributed sampler's order"),
    _M("sampler-epoch", "fastvae/data/batches.py", "self.sampler.set_epoch(epoch)",
       "self.sampler.set_epoch(0)", "seed ignored: the epoch of the order"),
    _M("binarize-rank", "fastvae/data/batches.py", "mix_seed(self.seed, epoch, self.rank)",
       "mix_seed(self.seed, epoch, 0)", "seed ignored: the rank's binarization stream"),
    _M("binarize-generator", "fastvae/data/batches.py",
       "torch.bernoulli(x, generator=self.generator)\n            yield x, y\n\n\ndef mnist",
       "torch.bernoulli(x)\n            yield x, y\n\n\ndef mnist",
       "seed ignored: dynamic binarization draws from the global generator"),
    _M("pixel-divisor", "fastvae/data/batches.py", 'binarize == "static" else 255.0',
       'binarize == "static" else 256.0', "constant: pixel scale"),
    # ---------------------------------------------------------------- fastvae/train/engine.py
    _M("step-seeds-epoch", "fastvae/train/engine.py", "SeedSequence([seed % 2**63, epoch])",
       "SeedSequence([seed % 2**63, 0])", "seed ignored: the epoch in the step seeds"),
    _M("dropout-not-seeded", "fastvae/train/engine.py", "if self.dropout:",
       "if not self.dropout:", "condition: dropout's generator seeded per step"),
    _M("micro-batch-share", "fastvae/train/engine.py",
       "(out.loss if share == 1.0 else out.loss * share).backward()", "out.loss.backward()",
       "argument dropped: a micro-batch's share"),
    _M("rank-seeds", "fastvae/train/engine.py", "self.seed_step(seeds[rank + W * a])",
       "self.seed_step(seeds[W * a])", "seed ignored: the rank's noise"),
    _M("epoch-weights", "fastvae/train/engine.py", "(values * weights[:, None]).sum(0)",
       "values.sum(0)", "argument dropped: batch sizes in the epoch's means"),
    # ---------------------------------------------------------------- fastvae/train/checkpoint.py
    _M("resume-epochs-boundary", "fastvae/train/checkpoint.py", 'if cfg.epochs < ckpt["epoch"]:',
       'if cfg.epochs < ckpt["epoch"] - 1:', "condition: resume accepts one epoch fewer"),
    _M("python-rng-not-restored", "fastvae/train/checkpoint.py",
       'random.setstate(state["python"])', "pass", "state not restored: Python's generator"),
    _M("torch-rng-not-restored", "fastvae/train/checkpoint.py",
       'torch.set_rng_state(state["torch"])', "pass", "state not restored: torch's generator"),
    _M("cosine-resume-check", "fastvae/train/checkpoint.py",
       'if cfg.lr_schedule != "constant" and', 'if cfg.lr_schedule == "constant" and',
       "condition: a cosine schedule's epochs"),
    _M("resume-seed-change", "fastvae/train/checkpoint.py", 'fixed = RESUME_OVERRIDES + ("out",)',
       'fixed = RESUME_OVERRIDES + ("out", "seed")', "condition: a resumed run's seed may change"),
    # ---------------------------------------------------------------- fastvae/train/loop.py
    _M("rng-not-restored", "fastvae/train/loop.py",
       'set_rng_state(ckpt["rng_states"][self.env.rank], self.env.device)', "pass",
       "state not restored: the generators on resume"),
    _M("resume-start-epoch", "fastvae/train/loop.py", 'self.start_epoch = ckpt["epoch"] + 1',
       'self.start_epoch = ckpt["epoch"]', "constant: the first resumed epoch"),
    _M("optimizer-not-restored", "fastvae/train/loop.py",
       'build.load_optimizer_state(self.optimizer, ckpt["optimizer"])', "pass",
       "state not restored: the optimizer"),
    _M("scheduler-not-restored", "fastvae/train/loop.py",
       'self.scheduler.load_state_dict(ckpt["scheduler"])', "pass",
       "state not restored: the schedule"),
    _M("test-data-not-reseeded", "fastvae/train/loop.py",
       "self.test_batches.generator.manual_seed(self.seed + TEST_DATA_SEED)\n        test =",
       "test =", "seed ignored: the test set's binarization per epoch"),
    # ---------------------------------------------------------------- fastvae/models/iwae.py
    _M("iwae-log-k", "fastvae/models/iwae.py", "- math.log(k)).float()",
       "- math.log(k + 1)).float()", "constant: the bound's log k"),
    _M("iwae-eps", "fastvae/models/iwae.py", "torch.exp(-0.5 * logvar)", "torch.exp(0.5 * logvar)",
       "operator: eps from z"),
    _M("iwae-mean-numel", "fastvae/models/iwae.py", "numel = x.shape[0] * model.input_dim",
       "numel = x.shape[0]", "argument dropped: the per-element mean's count"),
    _M("iwae-recon-mean", "fastvae/models/iwae.py", "recon = nll_x.mean(0).float()",
       "recon = nll_x[0].float()", "argument: recon from the first draw only"),
    _M("iwae-generator", "fastvae/models/iwae.py", "n_samples=k, generator=generator,",
       "n_samples=k, generator=None,", "seed ignored: the draws' generator"),
]
