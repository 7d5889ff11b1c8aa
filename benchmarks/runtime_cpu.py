"""CPU runtime of packed VPTQ layers: vptq-rs native path vs Microsoft's ``vptq`` PyTorch path.

1. Dequantize one 14336x4096 Linear (Llama-3-8B up_proj shape) at v=8/k=65536 + res 256 and
   at v=6/k=4096, perm + norm on, random codebooks and codes, fp16 storage and output.
   Both sides read the same packed tensors; their outputs are checked equal first.
2. Batch-1 forward (1 token and 32 tokens, no KV cache) of a SmolLM2-135M-shaped Llama
   (30 layers, hidden 576, random weights) with every decoder Linear quantized, fp32
   compute, vs the same model built from vptq's ``VQuantLinear`` and vs the dense model.
3. Resident size of the loaded packed model vs the dense fp16 model.

The baseline is ``vptq`` 0.0.5.post1's CPU path (``vptq.ops.dequant``; its CUDA
kernels do not load without a GPU). When ``vptq`` is not installed the script stops: it
never reports a ratio against something else under that name.
Writes results/runtime-cpu.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _meta import median, timeit, write
from vptq_rs import checkpoint, ops
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import VQuantLinear, random_quantized_layer

LAYER_CONFIGS = {
    "v8_k65536_res256": dict(vector_len=8, num_centroids=65536, num_res_centroids=256),
    "v6_k4096": dict(vector_len=6, num_centroids=4096),
}


def import_vptq() -> Any:
    if importlib.util.find_spec("vptq") is None:
        sys.exit("Microsoft's vptq is not installed: pip install --no-deps vptq==0.0.5.post1")
    if importlib.util.find_spec("sentence_transformers") is None:  # imported by vptq, unused
        stub = types.ModuleType("sentence_transformers.SentenceTransformer")
        stub.SentenceTransformer = type("SentenceTransformer", (), {})  # type: ignore[attr-defined]
        sys.modules.setdefault("sentence_transformers", types.ModuleType("sentence_transformers"))
        sys.modules.setdefault("sentence_transformers.SentenceTransformer", stub)
    root = logging.getLogger()
    handlers = list(root.handlers)
    import vptq.layers.model_base
    import vptq.layers.vqlinear
    import vptq.ops

    root.handlers[:] = handlers
    return vptq


def their_dequant(vptq: Any, mod: Any) -> torch.Tensor:
    """vptq's CPU dequantization of one of its layers, as its forward calls it."""
    rc = mod.res_centroids.weight if mod.res_centroids is not None else None
    return vptq.ops.dequant(
        indices=mod.indices,
        centroids=mod.centroids.weight.view(mod.num_codebooks, mod.num_centroids, mod.vector_len),
        outlier_indices=None,
        outlier_centroids=None,
        res_indices=None,
        res_centroids=None
        if rc is None
        else rc.view(mod.num_codebooks, mod.num_res_centroids, mod.vector_len),
        perm=mod.perm,
        weight_scale=mod.weight_scale,
        weight_bias=mod.weight_bias,
        is_indice_packed=True,
        enable_outlier=False,
        enable_residual=rc is not None,
        enable_perm=True,
        enable_norm=True,
        num_centroids=mod.num_centroids,
        num_outlier_centroids=-1,
        num_res_centroids=mod.num_res_centroids,
        padding=mod.padding,
        outlier_padding=0,
        num_codebooks=mod.num_codebooks,
        group_size=mod.group_size,
        outlier_size=0,
        vector_len=mod.vector_len,
        outlier_vector_len=-1,
    )


def bench_dequant(vptq: Any, repeat: int) -> dict[str, Any]:
    out = {}
    for name, extra in LAYER_CONFIGS.items():
        cfg = LayerConfig(in_features=4096, out_features=14336, enable_perm=True, **extra)
        ours = VQuantLinear.from_quantized(random_quantized_layer(cfg, seed=0), torch.float16)
        theirs = vptq.layers.vqlinear.VQuantLinear(
            **cfg.to_hf(), enable_proxy_error=False, dtype=torch.float16
        )
        theirs.load_state_dict(ours.state_dict(), strict=True)
        with torch.no_grad():
            a, b = ours.dequantize(torch.float16), their_dequant(vptq, theirs)
            max_diff = float((a.float() - b.float()).abs().max())
            del a, b
            gc.collect()
            # interleave the two sides so machine noise hits both alike
            t_ours, t_theirs = [], []
            for _ in range(repeat):
                t_ours += timeit(lambda m=ours: m.dequantize(torch.float16), repeat=1, warmup=0)
                t_theirs += timeit(lambda m=theirs: their_dequant(vptq, m), repeat=1, warmup=0)
        out[name] = {
            "shape": [14336, 4096],
            "config": cfg.to_hf(),
            "max_abs_diff_vs_vptq": max_diff,
            "vptq_rs_s": t_ours,
            "vptq_s": t_theirs,
            "vptq_rs_median_s": median(t_ours),
            "vptq_median_s": median(t_theirs),
            "speedup": median(t_theirs) / median(t_ours),
        }
        print(
            f"dequant {name}: vptq-rs {median(t_ours):.3f} s, vptq {median(t_theirs):.3f} s, "
            f"{out[name]['speedup']:.1f}x (max |diff| {max_diff:.2e})"
        )
        del ours, theirs
        gc.collect()
    return out


def smollm2_shaped(seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    return LlamaForCausalLM(cfg).eval()


def bench_model(vptq: Any, repeat: int, tmp: Path) -> dict[str, Any]:
    from vptq.layers.model_base import make_quant_linear

    dense = smollm2_shaped()
    layers = {}
    for i, (name, mod) in enumerate(
        (n, m) for n, m in dense.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"
    ):
        cfg = LayerConfig(
            in_features=mod.in_features,
            out_features=mod.out_features,
            vector_len=6,
            num_centroids=4096,
            enable_perm=True,
        )
        layer = random_quantized_layer(cfg, seed=i)
        layer.centroids.mul_(0.02)
        layers[name] = layer
    packed_dir = checkpoint.save_packed(tmp / "packed", dense, layers, dtype=torch.float16)
    ours = checkpoint.from_pretrained(packed_dir, dtype=torch.float32)

    theirs = smollm2_shaped()
    qc = checkpoint.read_config(packed_dir)["quantization_config"]
    make_quant_linear(
        theirs, qc["config_for_layers"], {}, target_layer=vptq.layers.vqlinear.VQuantLinear
    )
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in checkpoint.read_tensors(packed_dir).items()
    }
    theirs.load_state_dict(state, strict=False)
    theirs.tie_weights()
    theirs = theirs.float().eval()

    result: dict[str, Any] = {
        "model": "SmolLM2-135M-shaped Llama, random weights",
        "layer_config": "v6/k4096, perm+norm (2 index bits)",
        "compute_dtype": "float32",
        "quantized_layers": len(layers),
    }
    for tokens in (1, 32):
        ids = torch.randint(0, 49152, (1, tokens), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            diff = float((ours(ids).logits - theirs(ids).logits).abs().max())
            times: dict[str, list[float]] = {"vptq_rs": [], "vptq": [], "dense_fp32": []}
            for _ in range(repeat):
                times["vptq_rs"] += timeit(lambda i=ids: ours(i, use_cache=False), 1, 0)
                times["vptq"] += timeit(lambda i=ids: theirs(i, use_cache=False), 1, 0)
                times["dense_fp32"] += timeit(lambda i=ids: dense(i, use_cache=False), 1, 0)
        med = {k: median(v) for k, v in times.items()}
        result[f"forward_{tokens}_tokens"] = {
            "seconds": times,
            "median_s": med,
            "speedup_vs_vptq": med["vptq"] / med["vptq_rs"],
            "slowdown_vs_dense": med["vptq_rs"] / med["dense_fp32"],
            "max_abs_logit_diff_vs_vptq": diff,
        }
        print(
            f"forward {tokens} tok: vptq-rs {med['vptq_rs']:.3f} s, vptq {med['vptq']:.3f} s "
            f"({med['vptq'] / med['vptq_rs']:.1f}x), dense {med['dense_fp32']:.3f} s"
        )

    sizes = checkpoint.resident_bytes(packed_dir)
    half = ours.to(torch.float16)
    result["memory"] = {
        **sizes,
        "loaded_packed_fp16_bytes": checkpoint.module_bytes(half),
        "loaded_dense_fp16_bytes": checkpoint.module_bytes(dense.to(torch.float16)),
        "note": "bytes of parameters and buffers of the loaded models (fp16); "
        "quantized_bytes/dense_bytes come from the checkpoint files alone",
    }
    print(
        f"resident: packed {sizes['quantized_bytes'] / 2**20:.1f} MiB vs dense fp16 "
        f"{sizes['dense_bytes'] / 2**20:.1f} MiB ({sizes['ratio']:.2f}x smaller)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    # one thread by default: on a shared machine OpenMP barriers make multi-thread timings noise
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vptq = import_vptq()
    ops._logged.add(("native", "cpu"))  # keep the timing loop quiet
    dequant = bench_dequant(vptq, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        model = bench_model(vptq, args.repeat, Path(tmp))
    path = write(
        "runtime-cpu",
        {
            "baseline": "Microsoft vptq (PyPI) CPU PyTorch path, same process, interleaved runs",
            "threads": args.threads,
            "repeat": args.repeat,
            "dequantize_14336x4096_fp16": dequant,
            "smollm2_forward": model,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
