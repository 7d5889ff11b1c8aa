"""``vptq-rs eval``: perplexity of a float, packed or GGUF model (SOURCES.md protocol)."""

from __future__ import annotations

from pathlib import Path

import click

from vptq_rs.cli._common import adapter_option, data_dir_option, echo_json, json_option
from vptq_rs.cli.generate_cmd import device_option, dtype_option


def default_results_path(model: Path) -> Path:
    """Where ``ppl_results.json`` goes when ``--output`` is not given.

    A packed folder inside a vptq-rs run folder (a parent with ``run.json``): the run folder,
    beside ``packed_model/`` as DESIGN.md lays it out. Any other model folder: inside it.
    A ``.gguf`` file: the current directory.
    """
    if model.is_dir():
        if (model.parent / "run.json").is_file():
            return model.parent / "ppl_results.json"
        return model / "ppl_results.json"
    return Path.cwd() / "ppl_results.json"


@click.command("eval")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--dataset",
    default="wikitext2",
    show_default=True,
    help="wikitext2, c4, ptb, or the path of a UTF-8 text file.",
)
@click.option(
    "--seqlen",
    "--seq-len",
    "--seq_len",
    "seqlen",
    type=click.IntRange(min=2),
    default=2048,
    show_default=True,
    help="Tokens per window.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N windows."
)
@data_dir_option
@dtype_option
@device_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results file (merged by dataset). Default: the run folder for RUN/packed_model, "
    "else inside the model folder; ./ppl_results.json for a .gguf file.",
)
@click.option("--no-save", is_flag=True, help="Do not write ppl_results.json.")
@adapter_option
@json_option
def eval_cmd(
    model: Path,
    dataset: str,
    seqlen: int,
    limit: int | None,
    data_dir: str | None,
    dtype: str,
    device: str | None,
    output: Path | None,
    no_save: bool,
    adapter: Path | None,
    as_json: bool,
) -> None:
    """Perplexity of MODEL (float folder, packed folder, or .gguf file) on a corpus.

    Tokenized once without special tokens, cut into non-overlapping SEQLEN windows (tail
    dropped); reports exp of the mean per-window NLL and writes ppl_results.json.
    """
    from vptq_rs.evaluate import perplexity, save_results
    from vptq_rs.finetune.lora import load_with_adapter

    if dataset not in ("wikitext2", "c4", "ptb") and not Path(dataset).is_file():
        raise click.BadParameter(
            f"{dataset!r} is neither wikitext2, c4, ptb nor an existing file",
            param_hint="--dataset",
        )
    net, tokenizer = load_with_adapter(model, adapter, dtype=dtype, device=device)
    result = perplexity(net, tokenizer, dataset, seqlen=seqlen, limit=limit, data_dir=data_dir)
    result["dtype"] = str(next(net.parameters()).dtype).removeprefix("torch.")
    if not no_save:
        path = save_results(output or default_results_path(model), result, str(model))
        result["results_file"] = str(path)
    if as_json:
        echo_json(result)
        return
    click.echo(
        f"{Path(dataset).name} ppl {result['ppl']:.4f} "
        f"({result['windows']}/{result['total_windows']} windows of {seqlen} tokens, "
        f"{result['seconds']:.1f} s)"
    )
    if not no_save:
        click.echo(f"wrote {result['results_file']}", err=True)
