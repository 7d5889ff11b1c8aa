"""Options and helpers shared by several commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vptq_rs.data import DATA_ENV

data_dir_option = click.option(
    "--data-dir",
    "--data_dir",
    "data_dir",
    type=click.Path(file_okay=False),
    envvar=DATA_ENV,
    show_envvar=True,
    help="Folder holding the corpora (wikitext-2-raw/, c4/, ptb/).",
)

adapter_option = click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A LoRA adapter folder (from vptq-rs finetune --mode lora) to apply.",
)

max_shard_size_option = click.option(
    "--max-shard-size",
    type=click.IntRange(min=1),
    default=5 * 2**30,
    show_default=True,
    help="Bytes per safetensors shard.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
