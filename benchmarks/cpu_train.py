"""`fastvae train` against pytorch/examples ``vae/main.py`` on the CPU: whole commands, interleaved.

Both train the same model (784-400-20 MLP VAE, ReLU, Bernoulli likelihood) on all of MNIST
with Adam (lr 1e-3) at batch 128 for the same number of epochs, evaluate the test set after
every epoch and write their figures, each as a fresh process, as a user runs them:

- baseline: ``python main.py --epochs N --no-accel`` of pytorch/examples (BSD 3-Clause
  License, Copyright (c) 2017, Pytorch contributors; github.com/pytorch/examples, file
  ``vae/main.py``). It is not copied here: give its path with ``--baseline``. It reads MNIST
  from ``../data`` relative to its working folder and writes PNGs into ``results/``, so it runs
  in a scratch folder whose ``data`` links to ``$FASTVAE_DATA``.
- fastvae: ``python -m fastvae train --epochs N --device cpu --out SCRATCH/run``, run in the
  scratch folder (the fastvae it imports is the one on ``PYTHONPATH`` or installed).

The two alternate (A B A B ..., the order swapped every round, so drifts in the machine's
load hit both); each run's wall time is the whole process, imports and data loading
included. Printed: every pair's ratio fastvae / baseline, the median ratio, the median
seconds of each, and the final test loss of each (nats per image: the baseline's last
"Test set loss", fastvae's final test NELBO) with their relative difference. Both get the
same environment (``OMP_NUM_THREADS`` as set by the caller).

    python -m benchmarks.cpu_train --baseline /path/to/examples/vae/main.py [--epochs 2]
        [--rounds 3] [--fastvae-cmd "python -m fastvae train"] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE_LOSS = re.compile(r"====> Test set loss: ([0-9.]+)")
FASTVAE_LOSS = re.compile(r"final test NELBO ([0-9.]+)")


def _run(cmd: list[str], cwd: Path, pattern: re.Pattern) -> tuple[float, float]:
    """Run ``cmd`` in ``cwd``; return (wall seconds, the last loss ``pattern`` matched)."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    losses = pattern.findall(res.stdout)
    if not losses:
        raise RuntimeError(f"no test loss in the output of {' '.join(cmd)}:\n{res.stdout[-2000:]}")
    return seconds, float(losses[-1])


def measure(baseline: Path, epochs: int, rounds: int, fastvae_cmd: list[str]) -> dict:
    """``rounds`` interleaved pairs; see the module docstring."""
    data = os.environ.get("FASTVAE_DATA")
    if not data:
        raise SystemExit("set FASTVAE_DATA to the folder that holds MNIST/raw")
    scratch = Path(tempfile.mkdtemp(prefix="cpu_train_"))
    work = scratch / "work"
    (work / "results").mkdir(parents=True)
    (scratch / "data").symlink_to(Path(data).resolve())
    base_cmd = [sys.executable, str(baseline), "--epochs", str(epochs), "--no-accel"]
    times: dict[str, list[float]] = {"baseline": [], "fastvae": []}
    loss: dict[str, float] = {}
    for r in range(rounds):
        order = ("baseline", "fastvae") if r % 2 == 0 else ("fastvae", "baseline")
        for name in order:
            if name == "baseline":
                seconds, loss[name] = _run(base_cmd, work, BASELINE_LOSS)
            else:
                out = scratch / f"run{r}"
                cmd = [*fastvae_cmd, "--epochs", str(epochs), "--device", "cpu", "--out", str(out)]
                seconds, loss[name] = _run(cmd, scratch, FASTVAE_LOSS)
            times[name].append(seconds)
            print(f"round {r + 1}: {name} {seconds:.2f} s (test loss {loss[name]:.2f})", flush=True)
    ratios = [f / b for f, b in zip(times["fastvae"], times["baseline"])]
    return {
        "epochs": epochs, "rounds": rounds, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "seconds": times, "ratios": ratios, "median_ratio": statistics.median(ratios),
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "test_loss": loss,
        "test_loss_rel_diff": (loss["fastvae"] - loss["baseline"]) / loss["baseline"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_train",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, type=Path,
                   help="path of pytorch/examples vae/main.py")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fastvae-cmd", default=f"{sys.executable} -m fastvae train",
                   help="the fastvae command, before its --epochs/--device/--out flags")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    res = measure(args.baseline.resolve(), args.epochs, args.rounds, shlex.split(args.fastvae_cmd))
    print(f"fastvae / baseline wall: pairs {', '.join(f'{r:.2f}' for r in res['ratios'])}; "
          f"median {res['median_ratio']:.2f} (fastvae {res['median_seconds']['fastvae']:.1f} s, "
          f"baseline {res['median_seconds']['baseline']:.1f} s); test loss fastvae "
          f"{res['test_loss']['fastvae']:.2f}, baseline {res['test_loss']['baseline']:.2f} "
          f"({100 * res['test_loss_rel_diff']:+.2f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
