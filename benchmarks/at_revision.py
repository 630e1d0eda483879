"""Run a benchmark module on fastvae as it was at a git revision (before/after comparisons,
and checks against GPU figures measured on older code).

``run_module(rev, module, argv)`` runs ``python -m module *argv`` in a process that imports
``fastvae`` and its kernels from ``git archive rev`` (extracted into a temporary folder laid
out as installed: ``kernels/`` as ``fastvae/kernels/``, first on the path), while the
benchmark's own modules stay this checkout's. Paths in ``argv`` must be absolute (the child
starts in the temporary folder: ``python -m`` puts the working directory first on the path).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_module(rev: str, module: str, argv: list[str]) -> int:
    """Exit status of ``python -m module *argv`` on fastvae at ``rev`` (see above).

    Raises:
        subprocess.CalledProcessError: ``rev`` is not a revision of this repository (a
            shallow clone may lack it).
    """
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fastvae", "kernels"],
                             capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            members = tar.getmembers()
            for m in members:
                if m.name.startswith("kernels"):
                    m.name = "fastvae/" + m.name
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members, **safe)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, str(ROOT)])}
        return subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=tmp).returncode
