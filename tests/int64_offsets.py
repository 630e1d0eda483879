"""Compile for sm_90, without a GPU, the reconstruction kernels at sizes whose element offsets
pass 2**31, and write each launch's Triton IR (TTIR) into the folder given as the argument:
``<name>.ttir`` for the row tile ("rows"), the flat blocks ("flat") and the gradient scale
("scale"), and ``<name>.args``, the names of the TTIR function's arguments, one a line.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (tests/test_int64_offsets.py does).
The launches are recorded, not run (:mod:`benchmarks.launches`): the 4 GiB fp16 buffer they
point into is allocated but never touched, so it costs address space, not memory.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ from a checkout

import fastvae  # noqa: E402
from benchmarks import launches  # noqa: E402
from fastvae import kernels  # noqa: E402

N = 2**31 + 16  # elements of the buffer every launch below points into


def _cases(buffer: torch.Tensor):
    # 3 rows 2**30 elements apart (an int32 row stride), 16 features each: row 2 starts at
    # element 2**31. The row tile (reduction "none").
    rows = buffer.as_strided((3, 16), (2**30, 1))
    yield "rows", lambda: fastvae.reconstruction_loss(rows, rows, "mse", reduction="none",
                                                      backend="triton")
    # 2 dense rows of 2**30 + 8 elements (an int32 row length), 2**31 + 16 in all: the flat
    # blocks of a scalar reduction.
    flat = buffer.view(2, N // 2)
    yield "flat", lambda: fastvae.reconstruction_loss(flat, flat, "mse", reduction="sum",
                                                      backend="triton")
    # The in-place gradient scale over all N elements.
    yield "scale", lambda: kernels.recon_loss_scale_grad(buffer, torch.tensor(2.0))


def main(out: Path) -> None:
    buffer = torch.empty(N, dtype=torch.float16)
    for name, call in _cases(buffer):
        with launches.recording() as rec, torch.no_grad():
            call()
        (launch,) = rec.launches
        compiled = launches.compile_sm90(launch)
        (out / f"{name}.ttir").write_text(compiled.asm("ttir"))
        # The TTIR function's arguments, in order: the signature less the constexprs (and, on
        # Triton 3.2, the integers specialized as constants), for TTIR without argument names.
        arguments = [n for n, ty in compiled.signature.items()
                     if ty != "constexpr" and n not in compiled.constexprs]
        (out / f"{name}.args").write_text("\n".join(arguments))
        print(name, launch.name, compiled.signature, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
