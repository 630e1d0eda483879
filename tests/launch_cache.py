"""Check the launch-cache rule of ``kernels/_launch.py`` without a GPU: launches with equal
keys get equal specializations from Triton's own binder for sm_90.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreted launchers build no
keys). Every call of the compile matrix (:func:`cuda_compile.calls`) runs twice, the second
time on new tensors of the same shapes (other data pointers, the same alignments), with the
Triton launches recorded instead of run (:mod:`benchmarks.launches`) and the key each launch
was given recorded beside it. For every key, the binder's (signature, constexprs,
divisibility attributes, options) must be the same for all its launches, and the arguments
must bind to the kernel's parameters. (The grid may differ: each launch passes its own,
tests/test_launch_cache.py.) Prints the number of launches, of keys and of
uncached launches (a pointer not 16-byte aligned), then "ok".
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cuda_compile  # noqa: E402

from benchmarks import launches  # noqa: E402
from fastvae.kernels import _launch  # noqa: E402


def main():
    keys = []
    original = _launch.CachedKernel.launch

    def recording_launch(self, key, n_programs, args, num_warps=4):
        keys.append((self.fn, key, n_programs))
        return original(self, key, n_programs, args, num_warps)

    _launch.CachedKernel.launch = recording_launch
    specs, n_launches, uncached = {}, 0, 0
    try:
        for call in list(cuda_compile.calls()) * 2:
            keys.clear()
            with launches.recording() as rec:
                call()
            assert len(keys) == len(rec.launches), "every launch goes through a CachedKernel"
            for (fn, key, n_programs), launch in zip(keys, rec.launches):
                assert fn is launch.kernel and launch.grid == (n_programs,)
                _, options, signature, constexprs, attrs = launches.bind(launch)
                n_launches += 1
                if key is None:
                    uncached += 1
                    continue
                spec = (repr(signature), repr(constexprs), repr(attrs), repr(options))
                seen = specs.setdefault((fn, key), spec)
                assert seen == spec, f"one key, two specializations of {launch.name}: {key}"
    finally:
        _launch.CachedKernel.launch = original
    print(f"launches {n_launches} keys {len(specs)} uncached {uncached}")
    print("ok")


if __name__ == "__main__":
    main()
