"""The launch cache (``kernels/_launch.py``) launches a cached compiled kernel only for keys
that determine Triton's specialization: checked on the whole compile matrix, without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import launch_cache


def test_equal_keys_get_equal_specializations():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(Path(launch_cache.__file__))], env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok", result.stdout[-2000:]
    n_launches, n_keys, uncached = (int(w) for w in lines[-2].split()[1::2])
    # every call ran twice on new tensors: each key was met at least twice
    assert n_keys > 20 and n_keys * 2 <= n_launches - uncached, lines[-2]
