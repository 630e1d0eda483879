"""Read a compiled kernel for sm_90: SASS text, instruction counts, global access widths, fp64
use (``cuobjdump -sass``), and registers, spills and stack (``ptxas -v`` on Triton's PTX with
the flags Triton passes). The tools ship in Triton's wheel under ``triton/backends/nvidia/bin``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton

BIN = Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin"
PTXAS, CUOBJDUMP = BIN / "ptxas", BIN / "cuobjdump"

_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_OPCODE = re.compile(r"^(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
# fp64 SASS: the double-precision ALU ops, and conversions or moves that name an F64 type.
_FP64 = re.compile(r"^(DADD|DMUL|DFMA|DSETP|DSET|DMNMX|DMMA)\b|\.F64\b")  # on the opcode


@dataclass(frozen=True)
class Sass:
    """What the SASS of one kernel says.

    ``instructions``: every instruction except ``NOP`` padding and the ``BRA`` to itself that
    ends the code after ``EXIT`` (a static count: each instruction once, however often it
    runs). ``last_program_only``: those of them that only the program drawing the last ticket
    of a last-program reduction can run -- everything after the first ``EXIT`` that follows
    the ticket's atomic add (``ATOMG``/``ATOM`` ``.ADD``), where every other program leaves --
    provided no branch before that ``EXIT`` jumps past it; 0 for a kernel without a ticket.
    ``load_bits`` / ``store_bits``: the widest global load (``LDG``) and store (``STG``), in
    bits (0 when there is none); ``loads_128`` / ``stores_128``: how many of them are 128 bits
    wide; ``hot_loads_128``: the 128-bit loads every program runs (those before the last
    program's part). ``fp64``: the double-precision instructions.
    """

    text: str
    instructions: int
    load_bits: int
    store_bits: int
    loads_128: int
    stores_128: int
    fp64: tuple[str, ...]
    last_program_only: int = 0
    hot_loads_128: int = 0


def _width(opcode: str) -> int:
    parts = opcode.split(".")
    for p in parts[1:]:
        if p in ("64", "128"):
            return int(p)
        if p in ("U8", "S8"):
            return 8
        if p in ("U16", "S16"):
            return 16
    return 32


def parse_sass(text: str) -> Sass:
    count, loads, stores, fp64, hot_loads_128 = 0, [0], [0], [], 0
    lines = [m.groups() for m in map(_INSTR.match, text.splitlines()) if m]
    ticket, split, split_count, max_target = False, None, 0, -1
    for addr, instr in lines:
        m = _OPCODE.match(instr)
        op = m.group(1) if m else ""
        if op == "NOP":
            continue
        target = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", instr)
        if op.startswith("BRA") and target and int(target.group(1), 16) == int(addr, 16):
            continue  # the endless self-branch after EXIT
        count += 1
        if split is None and target:
            max_target = max(max_target, int(target.group(1), 16))
        if op.startswith(("ATOMG", "ATOM.")) and ".ADD" in op:
            ticket = True
        elif ticket and split is None and op == "EXIT":
            split, split_count = int(addr, 16), count
        if op.startswith("LDG"):
            loads.append(_width(op))
            hot_loads_128 += split is None and loads[-1] == 128
        elif op.startswith("STG"):
            stores.append(_width(op))
        if _FP64.search(op):
            fp64.append(instr)
    last_only = count - split_count if split is not None and max_target <= split else 0
    return Sass(text, count, max(loads), max(stores), loads.count(128), stores.count(128),
                tuple(fp64), last_only, hot_loads_128 if last_only else loads.count(128))


def disassemble(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(CUOBJDUMP), "-sass", str(path)], capture_output=True, text=True,
                             check=True)
    return out.stdout


@dataclass(frozen=True)
class Resources:
    """``ptxas -v``: registers per thread, spill stores + loads (bytes), stack frame (bytes)."""

    registers: int
    spill_bytes: int
    stack_bytes: int


def ptxas_resources(ptx: str, arch: str = "sm_90a", fp_fusion: bool = True) -> Resources:
    """Assemble ``ptx`` again with the flags Triton's ``make_cubin`` uses (``-lineinfo -v
    --regAllocOptLevel=2``, ``--fmad=false`` when fp fusion is off) and parse its report."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        cmd = [str(PTXAS), "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
               "--regAllocOptLevel=2", f"--gpu-name={arch}", str(src), "-o", os.devnull]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (regs and stack and spills):
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return Resources(int(regs.group(1)), int(spills.group(1)) + int(spills.group(2)),
                     int(stack.group(1)))


_TENSOR = re.compile(r"tensor<((?:\d+x)+)!tt\.ptr<(\w+)>")
_SCALAR_PTR = re.compile(r"!tt\.ptr<(\w+)>")
_BITS = {"f64": 64, "i64": 64, "f32": 32, "i32": 32, "f16": 16, "bf16": 16, "i16": 16, "i8": 8,
         "i1": 8}


def access_shapes(ttgir: str, op: str) -> list[tuple[int, int]]:
    """``(elements, element bits)`` of each ``tt.load`` (op "load") or ``tt.store`` ("store") in
    Triton GPU IR, from the pointer type the access goes through (1 element for a scalar)."""
    out = []
    for line in ttgir.splitlines():
        if f"tt.{op} " not in line:
            continue
        types = line.rsplit(" : ", 1)[-1]
        tensor = _TENSOR.search(types)
        if tensor:
            n = 1
            for s in tensor.group(1).rstrip("x").split("x"):
                n *= int(s)
            out.append((n, _BITS.get(tensor.group(2), 32)))
        else:
            scalar = _SCALAR_PTR.search(types)
            out.append((1, _BITS.get(scalar.group(1), 32) if scalar else 32))
    return out
