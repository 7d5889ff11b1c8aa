"""Does a failing TORCH_CHECK that streams an integer crash a freshly built extension here?

    python scripts/torch_check_int_message.py f_int   # the message holds an int64
    python scripts/torch_check_int_message.py f_str   # the message is a string only

On the lent H100 machine (torch 2.11, CUDA 13; run 13c,
benchmarks/results/op-error-messages-run13c-h100.txt) ``f_int`` died with a segfault and
``f_str`` raised a RuntimeError: the reason ops.cpp builds its messages with snprintf
(VPTQ_CHECK). Needs a C++ compiler and ninja (it builds a tiny extension).
"""

from __future__ import annotations

import sys

from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>
void f_int(int64_t v) { TORCH_CHECK(v < 0, "v must be negative, got ", v); }
void f_str(int64_t v) { TORCH_CHECK(v < 0, "v must be negative"); }
"""


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "f_int"
    mod = load_inline("ctl", cpp_sources=[SOURCE], functions=["f_int", "f_str"], verbose=False)
    print("calling", which, flush=True)
    try:
        getattr(mod, which)(5)
    except RuntimeError as exc:
        print("raised:", str(exc).splitlines()[0], flush=True)


if __name__ == "__main__":
    main()
