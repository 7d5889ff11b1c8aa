"""``vptq-rs hessian``: collect FORMAT.md Hessian files layer by layer."""

from __future__ import annotations

from typing import Any

import click

from vptq_rs.cli._common import data_dir_option


@click.command("hessian")
@click.argument("model")
@click.option("--calib", default="c4", show_default=True, help="c4 | wikitext2 | ptb | FILE.")
@click.option("--nsamples", type=int, default=128, show_default=True)
@click.option("--seq-len", "--seq_len", "seq_len", type=int, default=2048, show_default=True)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for {layer}_{qkv|o|up|down}.pt files.",
)
@data_dir_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N.")
@click.option("--overwrite", is_flag=True, help="Recompute files that already exist.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def hessian_cmd(**kw: Any) -> None:
    """Run MODEL on calibration text and write each layer group's input Hessian."""
    from pathlib import Path

    from vptq_rs.data import calibration_windows, data_dir
    from vptq_rs.errors import InvalidValueError
    from vptq_rs.models import load_config, load_model

    if kw["nsamples"] < 1:
        raise InvalidValueError(f"--nsamples must be >= 1, got {kw['nsamples']}")
    if kw["seq_len"] < 2:
        raise InvalidValueError(f"--seq-len must be >= 2, got {kw['seq_len']}")
    if kw["calib"] in ("c4", "wikitext2", "ptb"):
        data_dir(kw["data_dir"])
    elif not Path(kw["calib"]).is_file():
        raise InvalidValueError(f"--calib: {kw['calib']} is not c4, wikitext2, ptb or a file")
    if not (kw["device"] == "cpu" or kw["device"].startswith("cuda")):
        raise InvalidValueError(f"--device must be cpu or cuda[:N], got {kw['device']}")
    load_config(kw["model"])
    out = Path(kw["out"])
    if kw["overwrite"] and out.is_dir():
        for f in out.glob("*_*.pt"):
            f.unlink()
    from vptq_rs.hessian import collect_hessians

    model, tok = load_model(kw["model"])
    if tok is None:
        raise InvalidValueError(f"{kw['model']} has no tokenizer")
    windows = calibration_windows(
        tok, kw["calib"], kw["nsamples"], kw["seq_len"], kw["seed"], kw["data_dir"]
    )
    written = collect_hessians(model, windows, out, device=kw["device"], progress=not kw["quiet"])
    click.echo(f"wrote {len(written)} Hessian files to {out}")
