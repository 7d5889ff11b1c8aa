"""A CUDA compiler from PyPI, so the kernels build where no CUDA toolkit is installed.

CI machines have no GPU and no toolkit; with this they still compile every kernel and load
the ops (their fake implementations then trace shapes), so a kernel that no longer compiles
fails CI instead of the next GPU session. Running the kernels still needs a GPU.

Installs ``nvidia-cuda-nvcc``, ``nvidia-cuda-crt`` and ``nvidia-nvvm`` at the version of the
installed ``nvidia-cuda-runtime`` (the one torch was built against), ``nvidia-cuda-cuobjdump``
and ``nvidia-cuda-nvdisasm`` (SASS for ``scripts/sass_loops.py``), plus ``ninja``, into
this interpreter's environment, then lays out a CUDA_HOME of symlinks at ``--out`` (the
wheels put headers and libraries where torch.utils.cpp_extension does not look: ``lib``
instead of ``lib64``, no unversioned ``libcudart.so``). Prints the CUDA_HOME.

    python scripts/cuda_toolchain.py --out .cache/cuda-home
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def runtime_version() -> str:
    """Version of the CUDA runtime wheel torch depends on, e.g. '13.2.86'."""
    try:
        return md.version("nvidia-cuda-runtime")
    except md.PackageNotFoundError:
        fail("nvidia-cuda-runtime is not installed: this torch has no CUDA runtime wheels")


def cuda_root(major: str) -> Path:
    """site-packages/nvidia/cu<major>, where the CUDA wheels of this major version live."""
    spec = importlib.util.find_spec("nvidia")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        root = Path(loc) / f"cu{major}"
        if (root / "include" / "cuda_runtime.h").is_file():
            return root
    fail(f"no nvidia/cu{major} folder with cuda_runtime.h in this environment")


def install(version: str) -> None:
    names = (
        "nvidia-cuda-nvcc",
        "nvidia-cuda-crt",
        "nvidia-nvvm",
        "nvidia-cuda-cuobjdump",
        "nvidia-cuda-nvdisasm",
    )
    pkgs = [f"{p}=={version}" for p in names]
    cmd = [sys.executable, "-m", "pip", "install", "-q", *pkgs, "ninja"]
    if subprocess.run(cmd).returncode != 0:
        fail(f"pip could not install {' '.join(pkgs)} ninja")


def lay_out(root: Path, out: Path) -> None:
    """CUDA_HOME at ``out``: bin, nvvm, include linked; lib64 with libcudart.so added."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lib64").mkdir(parents=True)
    for sub in ("bin", "nvvm", "include"):
        (tmp / sub).symlink_to(root / sub)
    for lib in (root / "lib").iterdir():
        (tmp / "lib64" / lib.name).symlink_to(lib)
    versioned = sorted((root / "lib").glob("libcudart.so.*"))
    if not versioned:
        fail(f"no libcudart.so.* in {root / 'lib'}")
    (tmp / "lib64" / "libcudart.so").symlink_to(versioned[0])
    # the new layout replaces the old one only once it is complete
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".cache/cuda-home", help="CUDA_HOME folder to create.")
    args = ap.parse_args()
    version = runtime_version()
    install(version)
    root = cuda_root(version.split(".")[0])
    for need in ("bin/nvcc", "nvvm/bin/cicc", "include/crt/host_config.h"):
        if not (root / need).exists():
            fail(f"{root / need} is missing after installing the CUDA {version} compiler wheels")
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    lay_out(root, out)
    ver = subprocess.run([str(out / "bin" / "nvcc"), "--version"], capture_output=True, text=True)
    if ver.returncode != 0:
        fail(f"{out / 'bin' / 'nvcc'} does not run: {ver.stderr.strip()[:200]}")
    print(out)


if __name__ == "__main__":
    main()
