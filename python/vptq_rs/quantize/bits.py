"""True bits per weight of a quantized layer: indices plus every stored overhead (FORMAT.md)."""

from __future__ import annotations

from typing import Any

from vptq_rs.layout import LayerConfig


def layer_bits(cfg: LayerConfig, float_bits: int = 16, codebook_bits: int = 16) -> dict[str, Any]:
    """Stored bits of one packed layer, by kind.

    float_bits: bits of the model-dtype tensors (scale, bias); codebook_bits: 16 as stored,
    or 8 to count int8 codebooks (each codebook then also stores one 16-bit scale).
    The Linear's own bias is not counted (an unquantized model stores it too).
    """
    g, r, c = cfg.group_num, cfg.num_vectors, cfg.group_size
    code_bits = cfg.index_bits + cfg.res_bits
    words = -(-c * code_bits // 32)
    index = g * r * words * 32
    index_payload = g * r * c * code_bits
    n_books = g * (2 if cfg.num_res_centroids else 1) + (1 if cfg.outlier_size else 0)
    codebook = g * cfg.vector_len * (cfg.num_centroids + cfg.num_res_centroids) * codebook_bits
    outlier_index = outlier_book = 0
    if cfg.outlier_size:
        outlier_index = cfg.num_outlier_vectors * cfg.outlier_size * 16
        outlier_book = cfg.outlier_num_centroids * cfg.outlier_vector_len * codebook_bits
    int8_scales = n_books * 16 if codebook_bits == 8 else 0
    scale_bias = 2 * cfg.q_cols * float_bits  # always stored (FORMAT.md: enable_norm true)
    perm = cfg.q_cols * 16 if cfg.enable_perm else 0
    total = index + codebook + outlier_index + outlier_book + int8_scales + scale_bias + perm
    weights = cfg.in_features * cfg.out_features
    return {
        "weights": weights,
        "index_bits": index,
        "index_padding_bits": index - index_payload,
        "codebook_bits": codebook + outlier_book + int8_scales,
        "outlier_index_bits": outlier_index,
        "scale_bias_bits": scale_bias,
        "perm_bits": perm,
        "total_bits": total,
        "bpw": total / weights,
    }


def summarize_bits(cfgs: list[LayerConfig], int8_codebooks: bool = False) -> dict[str, Any]:
    """Totals over layers: bits per weight as stored, and with int8 codebooks if used."""
    stored = [layer_bits(c) for c in cfgs]
    tot = {k: sum(s[k] for s in stored) for k in stored[0] if k != "bpw"} if stored else {}
    out: dict[str, Any] = dict(tot)
    out["bpw"] = tot["total_bits"] / tot["weights"] if stored else 0.0
    out["index_bpw"] = tot["index_bits"] / tot["weights"] if stored else 0.0
    if int8_codebooks and stored:
        small = [layer_bits(c, codebook_bits=8) for c in cfgs]
        bits8 = sum(s["total_bits"] for s in small)
        out["bpw_int8_codebooks"] = bits8 / tot["weights"]
        out["int8_codebook_bits_saved"] = tot["total_bits"] - bits8
    return out
