"""The benchmark harness runs end to end (smoke mode, on this machine's device), counts what
it claims to count, and the README's performance section is generated from results files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TRITON_VERSION
from test_data import HAVE_MNIST, NO_MNIST

import fastvae
from benchmarks import fake_cuda, losses, measure, readme, report
from benchmarks.losses import Case
from fastvae import cli

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
# GPU-only row fields: null where the smoke run has no CUDA device.
GPU_ONLY = ("launches", "host_syncs", "peak_extra_bytes")


def _set(case):
    return losses.make_set(case, CPU, torch.Generator().manual_seed(0))


def test_smoke_report_runs_end_to_end(tmp_path):
    out = tmp_path / "smoke.json"
    no_mnist = [] if HAVE_MNIST else ["--mnist-epochs", "0"]  # the loss rows still run
    assert report.main(["--smoke", "--device", "cpu", "--out", str(out), *no_mnist]) == 0
    res = json.loads(out.read_text())
    assert res["smoke"] is True and res["device_type"] == "cpu"
    assert tuple(res["headline"]) == report.HEADLINE_KEYS
    expected = report.cases(report.SMOKE, losses.OPS, tuple(report.DTYPES))
    assert len(res["rows"]) == len(expected) * len(losses.IMPLS)
    for row in res["rows"]:
        assert row["error"] is None, row
        assert row["time_ms"] > 0 and row["gbps"] > 0 and row["pct_copy_bw"] > 0
        assert all(row[k] is None for k in GPU_ONLY), row
        if row["impl"] == "fastvae":
            assert row["speedup_vs_eager"] > 0 and row["speedup_vs_compile"] > 0
            assert row["dispatched_launches"] >= 1 and row["dispatched_syncs"] == 0
        if row["mode"] == "fwd+bwd":
            assert row["saved_bytes"] >= row["saved_bytes_beyond_inputs"] >= 0
    head = res["headline"]
    assert head["loss_head_launches"] is None and head["loss_head_host_syncs"] is None
    if not HAVE_MNIST:
        assert res["mnist"] is None
        pytest.skip(f"the loss rows passed; the MNIST training step {NO_MNIST}")
    mnist = res["mnist"]
    assert mnist["epochs"] == 1 and mnist["train_images"] == 512
    for side in ("baseline", "fastvae"):
        assert mnist[side]["seconds"] > 0
        # an untrained 784-pixel Bernoulli model is at ~543 nats (784 log 2); one epoch of 4
        # steps moves it, but not far
        assert 200 < mnist[side]["test_loss"] < 600
    assert mnist["fastvae"]["cuda_graph"] is False
    assert head["mnist_test_loss_fastvae"] == mnist["fastvae"]["test_loss"]
    assert head["mnist_10_epochs_seconds"] is None  # one epoch is not ten


def test_fastvae_bench_command(tmp_path):
    out = tmp_path / "r.json"
    argv = ["bench", "--smoke", "--device", "cpu", "--ops", "latent", "--dtypes", "fp32",
            "--mnist-epochs", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    res = json.loads(out.read_text())
    assert {r["op"] for r in res["rows"]} == {"latent"} and res["mnist"] is None


def test_smoke_results_go_under_runs():
    assert (report.default_out({"device": "NVIDIA H100 80GB HBM3", "smoke": False})
            == report.RESULTS_DIR / "nvidia-h100-80gb-hbm3.json")
    assert str(report.default_out({"device": "x86_64", "smoke": True})).startswith("runs")


# ------------------------------------------------------------------ what a loss step costs


def _count(op, impl, monkeypatch, batch=4, dim=16, mode="fwd+bwd"):
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")  # the fused kernels, through the interpreter
    case = Case(op, batch, dim, torch.float32, mode)
    step = losses.step_fn(case, losses.forward_fn(op, impl), [_set(case)])
    step()
    return measure.count_dispatched(step)


def test_loss_head_launches_and_syncs(monkeypatch):
    """The fused loss step (sample + KL + recon, forward and backward) at MNIST size, launch by
    launch, as the eager CUDA path runs it.

    Forward: the latent kernel (z and the summed KL: its per-program partials added by the
    program that draws the last ticket), the recon kernel (the gradient for grad_output = 1
    and the loss, reduced the same way: no separate sum), and the caller's ``recon + kl``.
    Backward: the recon scale kernel (it reads grad_output on the device and returns at once
    when it is 1, otherwise scales the saved gradient in place) and the latent backward
    kernel. 5 launches, 4 of them fastvae's, no host sync.

    The Philox key: an eager CUDA call reads (seed, offset) from the CUDA generator on the host
    (``fastvae.ops.latent._host_key``: no launch); under compile, graph capture or with a CPU
    generator, ``torch.randint`` draws it on the device, one more launch. This CPU run first
    counts the CPU path as it is (the ``randint`` draw), then with ``_host_key`` answering as it
    does for an eager CUDA call, which is the CUDA eager launch list. (The CUDA-marked test in
    test_kernels_latent.py checks a real CUDA generator takes no ``randint``.)
    """
    kernels_and_add = [
        "triton:_sample_and_kl_fwd_kernel", "triton:_recon_loss_fwd_kernel", "add",
        "triton:_recon_loss_scale_grad_kernel", "triton:_sample_and_kl_bwd_kernel",
    ]
    counted = _count("loss_head", "fastvae", monkeypatch, batch=128, dim=784)  # MNIST: L = 20
    assert counted.ops == ["randint", *kernels_and_add] and counted.syncs == 0
    from fastvae.ops import latent as latent_op

    monkeypatch.setattr(latent_op, "_host_key", lambda generator, t, n_samples: (1234, 0))
    counted = _count("loss_head", "fastvae", monkeypatch, batch=128, dim=784)
    assert counted.ops == kernels_and_add and counted.launches == 5 and counted.syncs == 0
    eager = _count("loss_head", "eager", monkeypatch, batch=128, dim=784)
    assert eager.launches > 3 * counted.launches and eager.syncs == 0


def test_counter_sees_syncs_and_skips_views():
    x = torch.randn(4, 3)
    counted = measure.count_dispatched(lambda: (x.view(-1)[:2] * 2).sum().item())
    assert counted.ops == ["mul", "sum", "_local_scalar_dense"] and counted.syncs == 1
    # a reshape of a transposed tensor is a real copy, and is counted
    assert measure.count_dispatched(lambda: x.t().reshape(-1)).ops == ["clone"]


def test_counter_sees_the_copy_contiguous_makes_inside_a_fastvae_op(monkeypatch):
    """A fastvae op's body runs below autograd, where ``aten::contiguous`` (alias-annotated, so
    it looks like a view) reaches the counter whole: the clone it makes of an input whose last
    dim is not unit-stride (the one layout the latent kernels cannot read in place) must be
    counted; ``chunk`` views of one encoder output, read in place, and contiguous inputs make
    none."""
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    both = torch.randn(6, 4).t()  # (4, 6) with strides (1, 4): last dim not unit-stride
    mu, logvar = both.chunk(2, dim=1)
    assert mu.stride(-1) != 1 and logvar.stride(-1) != 1
    counted = measure.count_dispatched(lambda: fastvae.sample_and_kl(mu, logvar, reduction="sum"))
    assert counted.ops.count("clone") == 2, counted.ops
    for mu, logvar in (torch.randn(4, 6).chunk(2, dim=1), (mu.contiguous(), logvar.contiguous())):
        counted = measure.count_dispatched(
            lambda m=mu, v=logvar: fastvae.sample_and_kl(m, v, reduction="sum")
        )
        assert "clone" not in counted.ops, counted.ops


def test_eps_is_never_saved_and_recon_keeps_one_buffer(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    lat = Case("latent", 16, 8, torch.float32, "fwd+bwd")
    s = _set(lat)
    saved = measure.saved_for_backward(lambda: losses.fastvae_latent(s["mu"], s["logvar"]),
                                       [s["mu"], s["logvar"]])
    # the int64 Philox key (seed, offset) drawn on the device (here: the CPU generator's draw;
    # an eager CUDA draw keeps it as host ints, 0 bytes): eps is regenerated in backward
    assert saved.bytes_beyond_inputs == 16
    eager = measure.saved_for_backward(lambda: losses.eager_latent(s["mu"], s["logvar"]),
                                       [s["mu"], s["logvar"]])
    assert eager.bytes_beyond_inputs >= 16 * 8 * 4  # eps (or eps * std) at least

    rec = Case("recon_bernoulli", 4, 16, torch.float32, "fwd+bwd")
    s = _set(rec)
    saved = measure.saved_for_backward(lambda: losses.fastvae_recon_bernoulli(s["recon"], s["x"]),
                                       [s["recon"], s["x"]])
    assert saved.bytes_beyond_inputs == 4 * 16 * 4  # exactly one B x D buffer: the gradient


def test_byte_model():
    assert (losses.bytes_moved(Case("recon_mse", 4096, 49152, torch.float32, "fwd+bwd"))
            == 3 * 4096 * 49152 * 4)
    assert (losses.bytes_moved(Case("recon_bernoulli", 128, 784, torch.bfloat16, "fwd"))
            == 2 * 128 * 784 * 2)
    assert losses.bytes_moved(Case("latent", 128, 20, torch.float32, "fwd+bwd")) == 8 * 128 * 20 * 4
    assert (losses.bytes_moved(Case("loss_head", 128, 784, torch.float32, "fwd"))
            == (3 * 128 * 20 + 2 * 128 * 784) * 4)


def test_inputs_rotate_and_are_never_zero():
    case = Case("recon_bernoulli", 128, 784, torch.float32, "fwd")
    assert losses.n_sets(case, rotate_bytes=100 << 20) == 131  # ceil(100 MiB / 784 KiB)
    assert losses.n_sets(case, rotate_bytes=1 << 30) == 256  # capped
    assert losses.n_sets(case, rotate_bytes=0) == 2
    s = _set(case)
    assert (s["recon"] != 0).all() and (s["x"] > 0).all() and (s["x"] < 1).all()


@pytest.mark.parametrize("op", ["latent", "recon_bernoulli", "recon_mse", "loss_head"])
def test_implementations_agree(op):
    """eager, torch.compile and fastvae compute the same losses and gradients (noise aside:
    the latent ops are compared on their KL and mu-gradient of the KL alone)."""
    case = Case(op, 6, 5 if op == "latent" else 12, torch.float32, "fwd+bwd")
    s = _set(case)
    args = losses.inputs_of(case, s)
    fns = {impl: losses.forward_fn(op, impl, "aot_eager") for impl in losses.IMPLS}
    torch._dynamo.reset()
    outs = {impl: fn(*args) for impl, fn in fns.items()}
    for impl in ("eager", "compile"):
        want = outs["fastvae"][1] if op in ("latent", "loss_head") else outs["fastvae"]
        got = outs[impl][1] if op in ("latent", "loss_head") else outs[impl]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ the README section


def _fake_result(device="NVIDIA Test GPU", smoke=False):
    """A results file as benchmarks.report writes it, with made-up numbers: for testing the
    generator only (never committed)."""
    rows = [
        {"op": "recon_bernoulli", "B": 4096, "dim": 49152, "dtype": "fp32", "mode": "fwd+bwd",
         "impl": "fastvae", "time_ms": 1.5, "gbps": 1600.0, "pct_copy_bw": 88.0,
         "speedup_vs_eager": 6.0, "speedup_vs_compile": 1.7, "error": None},
        {"op": "recon_bernoulli", "B": 4096, "dim": 49152, "dtype": "fp32", "mode": "fwd+bwd",
         "impl": "eager", "time_ms": 9.0, "gbps": 270.0, "pct_copy_bw": 15.0,
         "speedup_vs_eager": None, "speedup_vs_compile": None, "error": None},
    ]
    head = dict.fromkeys(report.HEADLINE_KEYS)
    head.update(recon_bernoulli_pct_copy_bw=88.0, loss_head_launches=5,
                mnist_10_epochs_seconds=0.93)
    return {"device": device, "torch": "2.x", "triton": "3.x", "date": "2026-01-01T00:00:00+00:00",
            "smoke": smoke, "compile_backend": "inductor", "copy_bandwidth_gbps": 1818.0,
            "rows": rows, "mnist": None, "headline": head}


def _readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\nbefore\n\n{readme.BEGIN}\nold\n{readme.END}\n\nafter\n")
    return path


def test_readme_without_results_says_nothing_was_measured(tmp_path):
    path, results = _readme(tmp_path), tmp_path / "results"
    results.mkdir()
    assert readme.update(path, results) is False
    text = path.read_text()
    assert "No GPU numbers have been measured yet" in text
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert readme.update(path, results, check=True) is True


def test_readme_table_comes_from_the_results_file(tmp_path):
    path, results = _readme(tmp_path), tmp_path / "results"
    results.mkdir()
    (results / "nvidia-test-gpu.json").write_text(json.dumps(_fake_result()))
    assert readme.update(path, results, check=True) is False  # stale: check does not write
    assert "old" in path.read_text()
    readme.update(path, results)
    text = path.read_text()
    assert "### NVIDIA Test GPU" in text and "not measured" in text
    assert "| 88% | >= 85% |" in text and "| 5 | <= 3 |" in text and "| 0.93 s |" in text
    assert "| bernoulli | 4096 | 49152 | fp32 | 1.500 | 1600 | 88% | 6.0x | 1.70x |" in text
    assert "| 270 |" not in text  # only fastvae's rows are tabulated


def test_readme_refuses_smoke_runs(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu.json").write_text(json.dumps(_fake_result(smoke=True)))
    with pytest.raises(readme.NotAResult, match="smoke"):
        readme.load_results(results)


def test_headline_labels_cover_the_headline_keys():
    assert tuple(readme.HEADLINE_ROWS) == report.HEADLINE_KEYS


def test_repository_readme_is_generated_from_committed_results():
    assert readme.update(check=True), "README.md is stale: run python -m benchmarks.readme"
    assert readme.update_host(check=True), "the host estimate is stale: python -m benchmarks.readme"
    assert readme.update_static(check=True), (
        "the static report is stale: python -m benchmarks.readme"
    )
    assert readme.update_dropin(check=True), (
        "the drop-in table is stale: python -m benchmarks.readme"
    )


# ------------------------------------------------------------------ bytes, host time, the GPU check


def _passes(fn, pass_bytes):
    return measure.count_bytes(fn).total / pass_bytes


def test_count_bytes_counts_kernel_loads_and_stores():
    """Under the interpreter, a kernel's traffic is what its unmasked loads and stores move:
    the Bernoulli loss without gradient reads recon and x (2 passes over B x D, plus the
    per-program partial sums); sample_and_kl's forward reads mu and logvar and writes z."""
    B, D = 3, 1000  # D not a power of two: masked-off lanes must not count
    r, x = torch.randn(B, D), torch.rand(B, D)
    with torch.no_grad():
        got = _passes(lambda: fastvae.reconstruction_loss(r, x, "bernoulli", reduction="sum",
                                                          backend="triton"),
                      B * D * 4)
    assert 2.0 <= got < 2.01, got
    mu, lv = torch.randn(16, 20), torch.randn(16, 20)
    with torch.no_grad():
        got = _passes(lambda: fastvae.sample_and_kl(mu, lv, reduction="none", backend="triton"),
                      16 * 20 * 4)
    assert 3.0 <= got < 3.1, got  # + the per-row KL and the 16-byte Philox key (seed, offset)


def test_count_bytes_counts_other_ops_in_full():
    x = torch.randn(8, 8)
    traffic_ = measure.count_bytes(lambda: x.mul_(2.0))
    assert traffic_.ops == ["mul_"] and traffic_.total == 2 * 8 * 8 * 4  # read and written


@pytest.mark.parametrize("likelihood", ["bernoulli", "mse", "gaussian"])
def test_recon_fwd_bwd_moves_the_model_passes(likelihood):
    from benchmarks import traffic

    res = traffic.recon_passes(likelihood, B=2, D=512)
    assert res["passes"] < res["model_passes"] + 0.05, res


def test_traffic_json_output_is_json_alone(capsys, monkeypatch):
    """``python -m benchmarks.traffic --json`` prints what its committed file holds: JSON only."""
    from benchmarks import traffic

    rows = [{"op": "recon_mse", "passes": 3.0, "model_passes": 3,
             "per_launch": [{"op": "triton:k", "passes": 3.0}]}]
    monkeypatch.setattr(traffic, "run", lambda: rows)
    assert traffic.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert traffic.main([]) == 0
    assert "recon_mse" in capsys.readouterr().out


def _run_module(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


needs_cc = pytest.mark.skipif(
    fake_cuda.compiler() is None or torch.cuda.is_available(),
    reason="benchmarks.fake_cuda needs a C compiler ($CC, gcc or cc) to build its libcuda.so.1 "
    "stub, and a machine without a CUDA device (where the stub would shadow the real driver)",
)


@needs_cc
def test_fake_driver_times_the_launch_path_itself():
    """Both launch paths reach the fake driver once per launch, and the shorter one (the
    cached CompiledKernel's launcher, no JITFunction.run) is timed as the cheaper: the path is
    measured, not charged."""
    res = _run_module("benchmarks.fake_cuda", "--reps", "3000", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    times = {}
    for line in res.stdout.splitlines():
        name, us, _, _, _, calls, *_ = line.split()
        assert calls == "3001", line  # 3000 timed launches + 1 warm-up, all at the driver
        times[name] = float(us)
    assert times["compiled_kernel"] < times["jit_run"], times


@needs_cc
def test_host_estimate_runs_end_to_end(tmp_path):
    """A one-round run on the working tree: every step timed and counted through the fake
    driver, the model fitted, every entry point reported, nothing checked (the H200 figures
    are of other code); then on the code they are of (``--code``): the held-out checks."""
    from benchmarks import host_cases, host_model

    out = tmp_path / "host.json"
    res = _run_module("benchmarks.host", "--rounds", "1", "--batch-us", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["code"] == "working tree" and data["validation"] == []
    in_clone = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", host_model.MEASURED_CODE],
                              capture_output=True).returncode == 0  # not in a shallow clone
    # The measured code's latent kernels compare an int with a constexpr, which Triton 3.2's
    # compiler refuses (today's put the literal first).
    if in_clone and TRITON_VERSION >= (3, 3):
        old = tmp_path / "old.json"
        res_old = _run_module("benchmarks.host", "--rounds", "1", "--batch-us", "1", "--code",
                              host_model.MEASURED_CODE, "--out", str(old))
        assert res_old.returncode == 0, res_old.stderr[-3000:]
        checked = json.loads(old.read_text())
        assert checked["code"] == host_model.MEASURED_CODE
        assert ([r["figure"] for r in checked["validation"]]
                == [c.label for c in host_model.VALIDATE])
    assert [r["figure"] for r in data["fit"]] == list(host_model.FIT)
    assert data["model"]["scale"] > 0 and min(data["model"]["charges_us"].values()) >= 0
    rows = {(r["entry_point"], r["mode"]): r for r in data["entry_points"]}
    steps = data["steps"]
    assert set(rows) == {(n, m) for n in host_cases.ENTRY_POINTS for m in ("fwd", "fwd+bwd")}
    for (name, mode), r in rows.items():
        assert r["fastvae_events"]["launches"] >= 1 and r["eager_events"]["launches"] == 0, name
        assert r["ratio"] == pytest.approx(r["fastvae_us"] / r["eager_us"])
        assert (r["eager_events"]["backwards"] == 1) == (mode == "fwd+bwd"), (name, mode)
        # the floor: one launch each way, no op forward (backward: the leaves' .grad sums)
        floor = steps[f"{name}/{mode}/floor"]
        assert floor["launches"] == (2 if mode == "fwd+bwd" else 1), (name, mode)
        assert mode == "fwd+bwd" or floor["torch_ops"] == 0, name
        assert r["floor_ratio"] == pytest.approx(r["floor_us"] / r["eager_us"])
    # reconstruction_loss with a scalar reduction: one launch forward, one (the scale) backward
    assert steps["fastvae_recon_fwd"]["launches"] == 1
    assert steps["fastvae_recon_fwd_bwd"]["launches"] == 2
    assert steps["triton_noop_launch"]["launches"] == 1 and steps["torch_add"]["torch_ops"] == 1
    assert "ESTIMATE" in res.stdout


def test_host_model_fit_recovers_the_charges_that_made_the_figures():
    """Figures made by a known model from counted events are fitted back to that model, and a
    held-out check compares estimates with figures."""
    from benchmarks import host, host_model
    from benchmarks.host_count import Events

    truth = host_model.Model(
        2.0, {"allocations": 0.5, "torch_ops": 7.0, "backwards": 60.0, "launches": 9.0})
    events = {
        "torch_empty": Events(1, 0, 0, 0), "torch_add": Events(1, 1, 0, 0),
        "triton_noop_launch": Events(0, 0, 0, 1), "bce_logits_fwd": Events(4, 6, 0, 0),
        "bce_logits_fwd_bwd": Events(6, 11, 1, 0), "eager_sample_kl_fwd": Events(12, 12, 0, 0),
    }
    cpu = dict(zip(events, (1.8, 1.3, 6.3, 7.2, 35.6, 31.8)))
    figures = {n: truth.predict(cpu[n], e) for n, e in events.items()}
    fitted = host_model.fit(cpu, events, figures)
    assert fitted.scale == pytest.approx(truth.scale, rel=1e-6)
    for kind, value in truth.charges.items():
        assert fitted.charges[kind] == pytest.approx(value, rel=1e-6, abs=1e-6), kind
    timing = host.Timing(cpu["torch_add"], cpu["torch_add"])
    estimates = {"torch_add": host.Estimate(timing, events["torch_add"], 13.2)}
    check = host_model.Check("add", ("torch_add",))
    (row,) = host.check_rows([check], estimates, {"torch_add": 12.0})
    assert row["error"] == pytest.approx(0.1) and row["passed"]


def test_host_count_counts_what_cuda_would_launch_and_allocate():
    """BCE with logits, forward and backward: its kernel ops (not the composite ops around
    them), one backward pass; a Python scalar times a tensor is one op and one allocation
    (the CPU's cast of the wrapped scalar is not a CUDA op)."""
    from benchmarks import host_count

    x, logits = torch.rand(4, 8), torch.randn(4, 8, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    events = host_count.count(lambda: bce(logits, x, reduction="sum").backward())
    assert events.backwards == 1 and events.launches == 0
    assert {"log_sigmoid_forward", "sum", "sigmoid", "add_"} <= set(events.ops), events.ops
    assert "binary_cross_entropy_with_logits" not in events.ops
    assert events.torch_ops == len(events.ops)
    scaled = host_count.count(lambda: 0.5 * x)
    assert scaled.ops == ("mul",) and scaled.allocations == 1, scaled


def test_gpu_check_dry_run_and_refusal_without_cuda():
    from benchmarks import gpu_check

    res = _run_module("benchmarks.gpu_check", "--dry-run", timeout=120)
    assert res.returncode == 0 and "total budget 480 s" in res.stdout, res.stdout + res.stderr
    assert set(gpu_check.BUDGET_S) == set(gpu_check.PARTS) and "dropin" in res.stdout
    serial = sum(v for k, v in gpu_check.BUDGET_S.items() if k != "static")
    assert (serial <= gpu_check.TOTAL_BUDGET_S
            and gpu_check.BUDGET_S["static"] <= gpu_check.TOTAL_BUDGET_S)
    if torch.cuda.is_available():
        return
    res = _run_module("benchmarks.gpu_check", timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr, res.stderr


def test_gpu_check_smoke_flow(tmp_path):
    """The GPU parts' flow at smoke sizes on this machine's device: results in the report's
    format, marked smoke, with the check's outcome; the drop-in part's results (its smoke
    plan, every variant checked against its original) under "dropin"."""
    from benchmarks import dropin_timing

    out = tmp_path / "check.json"
    parts = ["recon", "loss_head", "latent", "dropin"]
    res = _run_module("benchmarks.gpu_check", "--smoke", "--parts", *parts, "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["smoke"] is True and tuple(data["headline"]) == report.HEADLINE_KEYS
    assert ({r["op"] for r in data["rows"]}
            == {"recon_bernoulli", "recon_mse", "loss_head", "latent"})
    assert ({(r["B"], r["dim"]) for r in data["rows"] if r["op"] == "latent"}
            == {report.SMOKE["latent"][0]})
    assert all(r["error"] is None for r in data["rows"])
    check = data["gpu_check"]
    assert (check["parts"] == parts and check["outcome"]["benchmarks"]["ok"]
            and check["outcome"]["dropin"]["ok"])
    drop = data["dropin"]
    assert drop["smoke"] is True and drop["checks_ok"] and len(drop["checks"]) == 2 * (3 + 2)
    assert len(drop["rows"]) == len(dropin_timing.plan("smoke"))
    for r in drop["rows"]:
        if ((r["code"], r["variant"], r["mode"], drop["device_type"])
                == ("pytorch_examples", "original", "bf16", "cuda")):
            assert "unsafe to autocast" in r["error"]  # F.binary_cross_entropy under CUDA autocast
        else:
            assert r["error"] is None and r["time_ms"] > 0, r
    compiled = [r for r in drop["rows"] if r["mode"] == "compile" and r["what"] == "step"]
    assert compiled and all(r["fresh_noise"]["fresh"] for r in compiled)


def test_cpu_head_benchmark_runs(tmp_path):
    """python -m benchmarks.cpu_head, briefly: both implementations timed, interleaved, the
    ratio written (no timing assertion: a shared CI machine is too noisy for one)."""
    from benchmarks import cpu_head

    out = tmp_path / "cpu_head.json"
    threads = torch.get_num_threads()
    try:
        assert cpu_head.main(["--rounds", "2", "--block", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["threads"] == 1 and res["case"]["batch"] == 128 and res["case"]["dim"] == 784
    assert res["eager_us"] > 0 and res["fastvae_us"] > 0
    assert res["ratio"] == pytest.approx(res["fastvae_us"] / res["eager_us"])
    assert res["control_ratio"] > 0
