"""Mutation testing of fastvae: single-point mutants (tests/mutation/mutants.py) applied one
at a time to temporary copies of the repository, each checked by the test files that cover
its module. A mutant is killed when those tests fail (or time out), survives when they pass.

    python tests/mutation/run.py                 # every CPU mutant, 2 at a time
    python tests/mutation/run.py --only kl-series-1/7! --only sampler-seed
    python tests/mutation/run.py --list          # the mutants and their test files

The working tree is never changed: the files git lists (tracked, and untracked ones it does
not ignore) are copied once per job into a temporary folder, and every mutant is written
into, tested in and restored in that copy. Before the mutants, the union of the test files
runs once on the unmutated copy and must pass. Set FASTVAE_DATA (the training tests need
MNIST; without it they skip and their mutants survive). Not part of CI: a run takes tens of
minutes (the kernels run through Triton's CPU interpreter).

Exit status: 0 when every mutant was killed, 1 when some survived, 2 on a broken setup (a
mutant's text not found exactly once, a failing baseline, a copy that imports another
fastvae).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from queue import Queue
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutants import MUTANTS, TESTS, Mutant  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]


class Outcome(NamedTuple):
    name: str
    path: str
    status: str  # "killed", "survived" or "error"
    seconds: float
    detail: str  # the first failing test, the timeout, or what went wrong


def _repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
        capture_output=True, check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _copy_repo(dest: Path, files: list[str]) -> Path:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    return dest


def _env(copy: Path, jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant of the same size and mtime: no stale .pyc
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def _check_imports(copy: Path, jobs: int) -> None:
    """fastvae and its kernels must load from the copy (an editable install of the working
    tree would otherwise serve the kernels, and every kernel mutant would survive)."""
    code = "import fastvae, fastvae.kernels as k; print(fastvae.__file__); print(k.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=_env(copy, jobs),
                         capture_output=True, text=True)
    paths = out.stdout.split()
    if out.returncode or len(paths) != 2 or not all(Path(p).is_relative_to(copy) for p in paths):
        sys.exit(f"the copy in {copy} imports fastvae from elsewhere ({paths or out.stderr}): "
                 "uninstall the editable install (pip uninstall fastvae) for the mutation run")


def _check_mutants(mutants: list[Mutant]) -> None:
    problems = []
    for m in mutants:
        if m.path not in TESTS:
            problems.append(f"{m.name}: no test files listed for {m.path}")
            continue
        text = (REPO / m.path).read_text()
        if text.count(m.old) != 1:
            problems.append(f"{m.name}: {m.old!r} occurs {text.count(m.old)} times in {m.path}")
            continue
        try:
            compile(text.replace(m.old, m.new), m.path, "exec")
        except SyntaxError as exc:
            problems.append(f"{m.name}: the mutant does not parse ({exc})")
    if problems:
        sys.exit("mutants out of date with the code:\n  " + "\n  ".join(problems))


def _first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return found[1] if found else output.strip().splitlines()[-1] if output.strip() else ""


def _pytest(copy: Path, files: list[str], jobs: int, timeout: float) -> tuple[int | None, str]:
    """(pytest's exit status or None after ``timeout`` seconds, its output)."""
    args = [sys.executable, *PYTEST, f"--basetemp={copy / '.pytest-tmp'}",
            *[f"tests/{f}" for f in files]]
    try:
        done = subprocess.run(args, cwd=copy, env=_env(copy, jobs), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


def _run_mutant(m: Mutant, copy: Path, jobs: int, timeout: float) -> Outcome:
    target = copy / m.path
    original = target.read_text()
    target.write_text(original.replace(m.old, m.new))
    start = time.perf_counter()
    try:
        status, output = _pytest(copy, TESTS[m.path], jobs, timeout)
    finally:
        target.write_text(original)
    seconds = time.perf_counter() - start
    if status is None:
        return Outcome(m.name, m.path, "killed", seconds, f"timeout after {timeout:.0f} s")
    if status == 0:
        return Outcome(m.name, m.path, "survived", seconds, "")
    if status in (1, 2):  # tests failed; or an error while collecting them (an import broke)
        return Outcome(m.name, m.path, "killed", seconds, _first_failure(output))
    return Outcome(m.name, m.path, "error", seconds, f"pytest exit {status}: "
                   + _first_failure(output))


def _baseline(copy: Path, mutants: list[Mutant], jobs: int) -> float:
    files = list(dict.fromkeys(f for m in mutants for f in TESTS[m.path]))
    print(f"baseline: {len(files)} test files on the unmutated copy ...", flush=True)
    start = time.perf_counter()
    status, output = _pytest(copy, files, jobs, timeout=3600)
    seconds = time.perf_counter() - start
    if status != 0:
        print(output[-4000:])
        sys.exit(f"the baseline fails (pytest exit {status}): fix the suite first")
    print(f"baseline passed in {seconds:.0f} s", flush=True)
    return seconds


def run(mutants: list[Mutant], jobs: int, timeout: float, baseline: bool) -> dict:
    """Test every mutant; returns the report (see :func:`main`)."""
    _check_mutants(mutants)
    files = _repo_files()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastvae-mutation-") as tmp:
        copies: Queue[Path] = Queue()
        for i in range(jobs):
            copies.put(_copy_repo(Path(tmp) / f"job{i}", files))
        first = copies.queue[0]
        _check_imports(first, jobs)
        baseline_s = _baseline(first, mutants, jobs) if baseline else None
        outcomes: list[Outcome] = []
        lock = threading.Lock()

        def one(m: Mutant) -> Outcome:
            copy = copies.get()
            try:
                return _run_mutant(m, copy, jobs, timeout)
            finally:
                copies.put(copy)

        with ThreadPoolExecutor(jobs) as pool:
            for future in as_completed([pool.submit(one, m) for m in mutants]):
                o = future.result()
                with lock:
                    outcomes.append(o)
                    print(f"[{len(outcomes)}/{len(mutants)}] {o.status:8} {o.name} "
                          f"({o.seconds:.0f} s) {o.detail}", flush=True)
    order = {m.name: i for i, m in enumerate(mutants)}
    outcomes.sort(key=lambda o: order[o.name])
    return _report(mutants, outcomes, time.perf_counter() - start, baseline_s, jobs)


def _report(mutants, outcomes, seconds, baseline_s, jobs) -> dict:
    killed = [o for o in outcomes if o.status == "killed"]
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "jobs": jobs,
        "seconds": round(seconds),
        "baseline_seconds": None if baseline_s is None else round(baseline_s),
        "mutants": len(mutants),
        "killed": len(killed),
        "survived": [o.name for o in outcomes if o.status == "survived"],
        "errors": [o.name for o in outcomes if o.status == "error"],
        "score": round(len(killed) / len(outcomes), 4) if outcomes else None,
        "outcomes": [o._asdict() for o in outcomes],
    }


def _select(args) -> list[Mutant]:
    chosen = [m for m in MUTANTS if args.gpu or not m.gpu]
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            sys.exit(f"no mutant named {', '.join(sorted(unknown))} (--list shows them)")
        chosen = [m for m in MUTANTS if m.name in args.only]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant "
                        "(repeatable; default: all but the GPU-only ones)")
    parser.add_argument("--gpu", action="store_true", help="include the GPU-only mutants "
                        "(only a CUDA device's tests can kill them)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds before a mutant's tests count as killed (default 900)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated copy")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    mutants = _select(args)
    if args.list:
        for m in mutants:
            print(f"{m.name:28} {m.path:28} {'[GPU] ' if m.gpu else ''}{m.what}")
        print(f"{len(mutants)} mutants")
        return 0
    if not os.environ.get("FASTVAE_DATA"):
        print("warning: FASTVAE_DATA is not set: the training tests skip and their mutants "
              "survive", flush=True)
    report = run(mutants, args.jobs, args.timeout, not args.no_baseline)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['killed']} of {report['mutants']} mutants killed "
          f"(score {report['score']}), {report['seconds']} s with {args.jobs} jobs")
    for name in report["survived"]:
        print(f"survived: {name}  (python tests/mutation/run.py --only {name})")
    for name in report["errors"]:
        print(f"error:    {name}")
    return 0 if not report["survived"] and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
