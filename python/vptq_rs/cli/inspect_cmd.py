"""``vptq-rs inspect``: validate a packed checkpoint and print its true bits per weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vptq_rs.cli._common import echo_json, json_option


def _config_text(cfg: dict[str, Any]) -> str:
    parts = [f"v{cfg['vector_len']}", f"k{cfg['num_centroids']}"]
    if cfg["num_res_centroids"]:
        parts.append(f"res{cfg['num_res_centroids']}")
    if cfg["group_num"] > 1:
        parts.append(f"g{cfg['group_num']}")
    if cfg["outlier_size"]:
        parts.append(
            f"out{cfg['outlier_size']}(v{cfg['outlier_vector_len']}"
            f"/k{cfg['outlier_num_centroids']})"
        )
    parts += [flag for flag in ("perm", "norm") if cfg[f"enable_{flag}"]]
    if cfg["vector_quant_dim_in"]:
        parts.append("in-dim")
    return " ".join(parts)


@click.command("inspect")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
@click.option("--layers/--no-layers", default=True, help="List every layer (default: yes).")
def inspect_cmd(directory: Path, as_json: bool, layers: bool) -> None:
    """Validate the packed checkpoint in DIRECTORY and print its true bits per weight.

    Every quantized layer's tensors are checked against config.json (names, shapes,
    dtypes, index word counts); the first mismatch is reported by layer name. Bits per
    weight count indices, codebooks, outlier indices, scale/bias, perm and padding.
    """
    from vptq_rs._core import validate_checkpoint
    from vptq_rs.footprint import footprint

    report = validate_checkpoint(str(directory))
    report["memory"] = footprint(report)
    if as_json:
        echo_json(report)
        return
    t = report["total"]
    if layers:
        width = max(len(layer["name"]) for layer in report["layers"])
        click.echo(f"{'layer':<{width}}  {'out x in':>12}  {'bpw':>6}  config")
        for layer in report["layers"]:
            c = layer["config"]
            shape = f"{c['out_features']}x{c['in_features']}"
            click.echo(
                f"{layer['name']:<{width}}  {shape:>12}  {layer['bits']['bits_per_weight']:6.3f}"
                f"  {_config_text(c)}"
            )
        click.echo()
    mib = 1 << 20
    n = t["num_weights"]
    click.echo(f"checkpoint ok: {len(report['layers'])} quantized layers, {n:,} weights")
    click.echo(f"bits per weight: {t['bits_per_weight']:.4f}")
    click.echo(
        "  indices {:.4f} (padding {:.4f}), codebooks {:.4f}, outlier indices {:.4f}, "
        "scale/bias {:.4f}, perm {:.4f}".format(
            *(
                t[k] / n
                for k in (
                    "index_bits",
                    "index_padding_bits",
                    "codebook_bits",
                    "outlier_index_bits",
                    "norm_bits",
                    "perm_bits",
                )
            )
        )
    )
    mem = report["memory"]
    click.echo(
        f"memory once loaded: {mem['quantized_bytes'] / mib:.1f} MiB (of which unquantized "
        f"parts {report['unquantized_bytes'] / mib:.1f} MiB); dense {mem['dense_dtype']}: "
        f"{mem['dense_bytes'] / mib:.1f} MiB; {mem['ratio']:.2f}x smaller"
    )
