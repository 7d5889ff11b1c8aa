"""``vptq-rs pack``: turn a quantization run's per-layer results into ``packed_model/``."""

from __future__ import annotations

from pathlib import Path

import click

from vptq_rs.cli._common import max_shard_size_option


@click.command("pack")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: RUN_DIR/packed_model).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default=None,
    help="dtype of codebooks and other floats (default: the model's if half, else fp16).",
)
@max_shard_size_option
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
def pack_cmd(
    run_dir: Path, out: Path | None, dtype: str | None, max_shard_size: int, overwrite: bool
) -> None:
    """Pack RUN_DIR/layers/*.safetensors (a quantize run) into a FORMAT.md checkpoint.

    The float model named in RUN_DIR/run.json supplies the config, tokenizer and every
    tensor that was not quantized.
    """
    from vptq_rs.checkpoint import DTYPE_NAMES, pack_run

    path = pack_run(
        run_dir,
        out,
        dtype=DTYPE_NAMES[dtype] if dtype else None,
        max_shard_bytes=max_shard_size,
        overwrite=overwrite,
    )
    click.echo(f"wrote {path}")
