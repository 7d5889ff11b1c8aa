"""``vptq-rs unpack``: packed checkpoint -> ordinary dense Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path

import click

from vptq_rs.cli._common import max_shard_size_option


@click.command("unpack")
@click.argument("packed_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder (must not exist unless --overwrite).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default="fp16",
    show_default=True,
    help="dtype of the written weights.",
)
@max_shard_size_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def unpack_cmd(
    packed_dir: Path, out: Path, dtype: str, max_shard_size: int, overwrite: bool
) -> None:
    """Dequantize PACKED_DIR into a dense model that stock transformers loads (no vptq-rs)."""
    from vptq_rs.checkpoint import DTYPE_NAMES, unpack_to_dense

    path = unpack_to_dense(
        packed_dir, out, DTYPE_NAMES[dtype], max_shard_bytes=max_shard_size, overwrite=overwrite
    )
    click.echo(f"wrote {path}")
