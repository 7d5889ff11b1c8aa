"""Instruction mix of the kernels' hot loops, read from the compiled SASS (no GPU needed).

Compiles a CUDA source for sm_90 with the CUDA_HOME from ``scripts/cuda_toolchain.py``,
disassembles it with ``cuobjdump -sass`` and reports, for each kernel whose name contains
``--kernels``, its hot loop: among the loops (the ranges of backward branches) that hold
tensor-core work (HMMA), else fp32 FMAs (FFMA), the one where that work is densest. Per
loop iteration: instructions, work instructions, instructions per work instruction and the
opcode mix. Static counts say nothing about stalls; they show where the issue slots go.

    python scripts/sass_loops.py python/vptq_rs/_cuda/kmeans.cu --kernels assign_ \\
        --out benchmarks/results/sass-kmeans.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"\bBRA\b.*?(0x[0-9a-f]+)")
FUNCTION = re.compile(r"Function : (\S+)")


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def opcode(ins: str) -> str:
    """'@!P0 HMMA.1688.F32.TF32 R8, ...' -> 'HMMA'."""
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def parse(sass: str) -> dict[str, list[tuple[int, str]]]:
    """Kernel name -> [(address, instruction)] from ``cuobjdump -sass`` output."""
    out: dict[str, list[tuple[int, str]]] = {}
    cur: list[tuple[int, str]] | None = None
    for line in sass.splitlines():
        if m := FUNCTION.search(line):
            cur = out.setdefault(m.group(1), [])
        elif cur is not None and (m := INSTR.match(line)):
            cur.append((int(m.group(1), 16), m.group(2)))
    return out


def hot_loop(code: list[tuple[int, str]]) -> dict[str, Any] | None:
    """The loop whose body is densest in HMMA (else FFMA) instructions, or None."""
    index = {a: i for i, (a, _) in enumerate(code)}
    loops = []
    for i, (addr, ins) in enumerate(code):
        m = BRANCH.search(ins)
        if m and int(m.group(1), 16) <= addr and int(m.group(1), 16) in index:
            loops.append([opcode(s) for _, s in code[index[int(m.group(1), 16)] : i + 1]])
    for work in ("HMMA", "FFMA"):
        found = [body for body in loops if work in body]
        if found:
            body = max(found, key=lambda b: (b.count(work) / len(b), -len(b)))
            mix = Counter(body)
            return {
                "work": work,
                "instructions": len(body),
                "work_instructions": mix[work],
                "instructions_per_work": round(len(body) / mix[work], 2),
                "mix": dict(mix.most_common()),
            }
    return None


def short_name(mangled: str) -> str:
    """'_ZN4vptq2km5tiled10assign_mmaILi1ELi3EEEv...' -> 'tiled::assign_mma<1,3>'."""
    parts = []
    rest = mangled[3:] if mangled.startswith("_ZN") else mangled
    while (m := re.match(r"(\d+)", rest)) is not None:
        n = int(m.group(1))
        parts.append(rest[len(m.group(1)) : len(m.group(1)) + n])
        rest = rest[len(m.group(1)) + n :]
    args = re.findall(r"Li(\d+)E", rest.split("EEv")[0]) if rest.startswith("I") else []
    name = "::".join(p for p in parts if p not in ("vptq", "km") and not p.startswith("_GLOBAL"))
    return name + (f"<{','.join(args)}>" if args else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="CUDA translation unit to compile.")
    ap.add_argument("--kernels", default="", help="Report kernels whose name contains this.")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", ".cache/cuda-home"))
    ap.add_argument("--out", type=Path, help="Write the report here as JSON.")
    args = ap.parse_args()
    if not args.source.is_file():
        fail(f"{args.source} is not a file")
    bin_dir = Path(args.cuda_home) / "bin"
    for tool in ("nvcc", "cuobjdump", "nvdisasm"):
        if not (bin_dir / tool).exists():
            fail(f"{bin_dir / tool} is missing (make cuda-toolchain installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cmd = [str(bin_dir / "nvcc"), "-std=c++17", "-O3", f"-arch={args.arch}", "-cubin"]
        cc = subprocess.run(
            [*cmd, "-I", str(args.source.parent), "-o", str(cubin), str(args.source)],
            capture_output=True,
            text=True,
        )
        if cc.returncode != 0:
            fail(f"nvcc failed: {cc.stderr.strip()[-500:]}")
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        dump = subprocess.run(
            [str(bin_dir / "cuobjdump"), "-sass", str(cubin)],
            capture_output=True,
            text=True,
            env=env,
        )
        if dump.returncode != 0:
            fail(f"cuobjdump failed: {dump.stderr.strip()[-500:]}")
    kernels = {}
    for name, code in sorted(parse(dump.stdout).items()):
        if args.kernels in name and (loop := hot_loop(code)) is not None:
            kernels[short_name(name)] = loop
    if not kernels:
        fail(f"no kernel with {args.kernels!r} in its name has a loop with HMMA or FFMA work")
    for name, r in kernels.items():
        top = ", ".join(f"{op} {n}" for op, n in list(r["mix"].items())[:6])
        print(
            f"{name:32s} {r['instructions']:4d} instr / {r['work_instructions']:3d} {r['work']}"
            f" = {r['instructions_per_work']:5.2f}  ({top})"
        )
    if args.out:
        ver = subprocess.run([str(bin_dir / "nvcc"), "--version"], capture_output=True, text=True)
        payload = {
            "source": str(args.source),
            "arch": args.arch,
            "nvcc": ver.stdout.strip().splitlines()[-1] if ver.stdout else "?",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "kernels": kernels,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(payload, indent=1) + "\n")
        tmp_out.replace(args.out)


if __name__ == "__main__":
    main()
