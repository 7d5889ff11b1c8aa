"""Hand ``torch.ops.vptq_rs.gemv_sorted`` a bad layout, one case per process, and report
whether it raised or crashed (needs a CUDA device and the built extension).

    python scripts/sorted_op_bad_inputs.py ok|short|base_dtype|entries_dtype|cg0

Cases: a good layout; entries cut to one group (chunk_base no longer matches); chunk_base as
int64; entries of the wrong dtype (int16 since the pair layout of session 15, int32 before);
chunk_groups 0. Run 13a/13c output (the single-column layout):
benchmarks/results/op-error-messages-run13c-h100.txt.
"""

from __future__ import annotations

import sys

import torch

from vptq_rs import cuda_ext, sorted_layout
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import packed_tensors, random_quantized_layer


def main() -> None:
    case = sys.argv[1] if len(sys.argv) > 1 else "ok"
    if cuda_ext.load() is None:
        raise SystemExit(f"CUDA kernels unavailable: {cuda_ext.unavailable_reason()}")
    dev = torch.device("cuda")
    cfg = LayerConfig(
        in_features=4100,
        out_features=64,
        vector_len=6,
        num_centroids=4096,
        enable_perm=True,
        bias=True,
    )
    layer = random_quantized_layer(cfg, seed=0, dtype=torch.float16)
    t = packed_tensors(layer)
    t = type(t)(*[x.to(dev) if x is not None else None for x in t])
    lay = sorted_layout.build(cfg, t.indices)
    one_group = lay.entries[:, :, : sorted_layout.GROUP_ENTRIES].contiguous()
    bad = {
        "ok": lay,
        "short": lay._replace(entries=one_group),
        "base_dtype": lay._replace(chunk_base=lay.chunk_base.long()),
        "entries_dtype": lay._replace(entries=lay.entries.short()),
        "cg0": lay._replace(chunk_groups=0),
    }[case]
    x = torch.zeros(1, cfg.in_features, device=dev).half()
    print("calling", case, flush=True)
    try:
        y = cuda_ext.gemv_sorted(x, cfg, t, bad)
        torch.cuda.synchronize()
        print("returned", y.shape, flush=True)
    except Exception as exc:  # report, whatever it is
        print("raised", type(exc).__name__, str(exc)[:300], flush=True)


if __name__ == "__main__":
    main()
