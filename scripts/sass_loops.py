"""Instruction mix of the kernels' hot loops, read from the compiled SASS (no GPU needed).

Compiles CUDA sources for sm_90 with the CUDA_HOME from ``scripts/cuda_toolchain.py``,
disassembles them with ``cuobjdump -sass`` and reports, for each kernel whose short name
(``gemv::main_kernel<__half,6,1,true,false>``) matches the regex ``--kernels``, its hot
loop: among the loops (the ranges of backward branches) that hold tensor-core work (HMMA),
else fp32 FMAs (FFMA), the one where that work is densest. Per loop iteration:
instructions, work instructions, instructions per work instruction and the opcode mix.
Static counts say nothing about stalls; they show where the issue slots go.

    python scripts/sass_loops.py python/vptq_rs/_cuda/kmeans.cu --kernels assign_ \\
        --out benchmarks/results/sass-kmeans.json
    python scripts/sass_loops.py python/vptq_rs/_cuda/gemv_f16.cu \\
        python/vptq_rs/_cuda/gemv_f16_l2.cu --kernels 'main_kernel<__half,(6|8|12),1,'
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
from concurrent.futures import ThreadPoolExecutor
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
    """'_ZN4vptq4gemv11main_kernelI6__halfLi6ELb1EEEv...' -> 'gemv::main_kernel<__half,6,true>'."""
    parts = []
    rest = mangled[3:] if mangled.startswith("_ZN") else mangled
    while (m := re.match(r"(\d+)", rest)) is not None:
        n = int(m.group(1))
        parts.append(rest[len(m.group(1)) : len(m.group(1)) + n])
        rest = rest[len(m.group(1)) + n :]
    args = []
    if rest.startswith("I"):
        rest = rest[1:]
        while rest and rest[0] != "E":
            if m := re.match(r"Li(-?\d+)E", rest):
                args.append(m.group(1))
            elif m := re.match(r"Lb([01])E", rest):
                args.append("true" if m.group(1) == "1" else "false")
            elif m := re.match(r"(\d+)", rest):
                n = int(m.group(1))
                args.append(rest[len(m.group(1)) : len(m.group(1)) + n])
                rest = rest[len(m.group(1)) + n :]
                continue
            else:
                break
            rest = rest[m.end() :]
    name = "::".join(p for p in parts if p not in ("vptq", "km") and not p.startswith("_GLOBAL"))
    return name + (f"<{','.join(args)}>" if args else "")


def source_commit(src: Path) -> str:
    """Commit of the git checkout holding ``src`` (+ "-dirty" if it has changes), or "?"."""
    git = ["git", "-C", str(src.resolve().parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "?"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True
    )
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def disassemble(src: Path, bin_dir: Path, arch: str) -> str:
    """``cuobjdump -sass`` of ``src`` compiled for ``arch`` (headers beside it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cmd = [str(bin_dir / "nvcc"), "-std=c++17", "-O3", f"-arch={arch}", "-cubin"]
        cc = subprocess.run(
            [*cmd, "-I", str(src.parent), "-o", str(cubin), str(src)],
            capture_output=True,
            text=True,
        )
        if cc.returncode != 0:
            fail(f"nvcc failed on {src}: {cc.stderr.strip()[-500:]}")
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        dump = subprocess.run(
            [str(bin_dir / "cuobjdump"), "-sass", str(cubin)],
            capture_output=True,
            text=True,
            env=env,
        )
        if dump.returncode != 0:
            fail(f"cuobjdump failed: {dump.stderr.strip()[-500:]}")
        return dump.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", type=Path, nargs="+", help="CUDA translation units to compile.")
    ap.add_argument("--kernels", default="", help="Report kernels whose short name matches.")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", ".cache/cuda-home"))
    ap.add_argument("--out", type=Path, help="Write the report here as JSON.")
    args = ap.parse_args()
    for src in args.sources:
        if not src.is_file():
            fail(f"{src} is not a file")
    try:
        pattern = re.compile(args.kernels)
    except re.error as exc:
        fail(f"--kernels is not a valid regex: {exc}")
    bin_dir = Path(args.cuda_home) / "bin"
    for tool in ("nvcc", "cuobjdump", "nvdisasm"):
        if not (bin_dir / tool).exists():
            fail(f"{bin_dir / tool} is missing (make cuda-toolchain installs it)")
    kernels = {}
    with ThreadPoolExecutor(max_workers=len(args.sources)) as pool:  # nvcc runs in parallel
        dumps = list(pool.map(lambda src: disassemble(src, bin_dir, args.arch), args.sources))
    for dump in dumps:
        for name, code in sorted(parse(dump).items()):
            short = short_name(name)
            if pattern.search(short) and (loop := hot_loop(code)) is not None:
                kernels[short] = loop
    if not kernels:
        fail(f"no kernel matching {args.kernels!r} has a loop with HMMA or FFMA work")
    for name, r in kernels.items():
        top = ", ".join(f"{op} {n}" for op, n in list(r["mix"].items())[:6])
        print(
            f"{name:32s} {r['instructions']:4d} instr / {r['work_instructions']:3d} {r['work']}"
            f" = {r['instructions_per_work']:5.2f}  ({top})"
        )
    if args.out:
        ver = subprocess.run([str(bin_dir / "nvcc"), "--version"], capture_output=True, text=True)
        payload = {
            "sources": [str(p) for p in args.sources],
            "source_commit": source_commit(args.sources[0]),
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
