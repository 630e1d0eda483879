"""Element offsets past 2**31 are computed in 64 bits: checked on the sm_90 compile of the
reconstruction kernels (tests/int64_offsets.py), with no GPU and no 2**31-element data.

A GPU run would need 4 GiB per tensor to see an int32 overflow; the compiled Triton IR shows
it at once: a product of the program id, or of a row stride, that is computed in 32 bits
before it reaches a pointer. Every such product here must be an ``i64`` one."""

import os
import re
import subprocess
import sys
from pathlib import Path

import int64_offsets
import pytest

_PRODUCT = re.compile(r"(%[\w.]+) = arith\.muli (%[\w.]+), (%[\w.]+)\b[^:\n]*: (\S+)")
_EXTEND = re.compile(r"(%[\w.]+) = arith\.extsi (%[\w.]+) ")
_ARG = re.compile(r"(%[\w.]+): [^,()]*(?:\{[^}]*\})? loc\(\"(\w+)\"")


def _products_of(ttir: str, value: str) -> list[tuple[str, str]]:
    """(line text, result type) of every ``arith.muli`` taking ``value``, or its sign
    extension, as an operand."""
    names = {value} | {m[1] for m in _EXTEND.finditer(ttir) if m[2] == value}
    return [(m[0], m[4]) for m in _PRODUCT.finditer(ttir) if {m[2], m[3]} & names]


def _argument(ttir: str, args: str, name: str) -> str:
    """The SSA name of kernel argument ``name`` in the TTIR's function signature: by the name
    Triton >= 3.3 writes into each argument's location, else (Triton 3.2 writes none) by its
    position among ``args``, the argument names int64_offsets.py lists one a line."""
    by_loc = {loc: ssa for ssa, loc in _ARG.findall(ttir)}
    if name in by_loc:
        return by_loc[name]
    (head,) = re.findall(r"tt\.func public @\w+\((.*)\) attributes", ttir)
    ssa = re.findall(r"(%arg\d+):", head)
    names = args.split("\n")
    assert len(ssa) == len(names), (ssa, names)
    return ssa[names.index(name)]


def _narrow(products: list[tuple[str, str]]) -> list[str]:
    return [line for line, ty in products if not ty.endswith(("i64", "i64>"))]


@pytest.fixture(scope="module")
def ttir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ttir")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, int64_offsets.__file__, str(out)], env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {p.name: p.read_text() for p in Path(out).iterdir()}


@pytest.mark.parametrize("case", ["rows", "flat", "scale"])
def test_program_offsets_are_64_bit(ttir, case):
    """The program id enters address arithmetic only as a 64-bit product (flat blocks and the
    gradient scale: pid * BLOCK; the row tile: a row of up to 2**31 - 1)."""
    text = ttir[f"{case}.ttir"]
    (pid,) = re.findall(r"(%[\w.]+) = tt\.get_program_id x", text)
    products = _products_of(text, pid)
    assert _narrow(products) == [], f"32-bit products of the program id in {case}"
    if case != "rows":
        assert products, f"no product of the program id in {case}: the check found nothing"


def test_row_offsets_are_64_bit(ttir):
    """Row 2 of rows 2**30 apart starts at element 2**31: row * row_stride must be 64-bit."""
    text = ttir["rows.ttir"]
    for stride in ("r_row_stride", "x_row_stride"):
        products = _products_of(text, _argument(text, ttir["rows.args"], stride))
        assert products, f"{stride} is never multiplied: the check found nothing"
        assert _narrow(products) == [], f"32-bit products of {stride}"
