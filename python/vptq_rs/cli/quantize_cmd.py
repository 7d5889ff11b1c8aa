"""``vptq-rs quantize``: the whole VPTQ run (or an RTN/GPTQ scalar baseline) on one model."""

from __future__ import annotations

from typing import Any

import click

from vptq_rs.cli._common import data_dir_option, echo_json, json_option
from vptq_rs.quantize.options import KMEANS_PRECISIONS

_PAIR = click.Tuple([int, int])


def _opt(*names: str, **kw: Any) -> Any:
    """An option under the reference's snake_case name and its kebab-case spelling."""
    snake = [n for n in names if n.startswith("--")]
    extra = [n.replace("_", "-") for n in snake if "_" in n]
    dest = snake[0][2:].replace("-", "_")
    return click.option(*snake, *[e for e in extra if e not in snake], dest, **kw)


@click.command("quantize")
@_opt("--model", required=False, help="Local HF folder, .gguf file, or hub id.")
@_opt("--output_dir", default="outputs", show_default=True, help="Root of run folders.")
@_opt("--calib", default="c4", show_default=True, help="c4 | wikitext2 | ptb | FILE.")
@_opt("--nsamples", type=int, default=128, show_default=True, help="Calibration windows.")
@_opt("--seq_len", type=int, default=2048, show_default=True, help="Tokens per window.")
@data_dir_option
@_opt("--seed", type=int, default=0, show_default=True, help="Calibration sampling seed.")
@_opt("--resume", type=click.Path(file_okay=False), help="Continue an interrupted RUN_DIR.")
@_opt("--overwrite", is_flag=True, help="Replace an existing run folder of the same name.")
@_opt(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes, one layer each at a time (CPU: one per core; with --num_gpus: "
    "spread over the GPUs, 2-4 per GPU overlap their host-side work).",
)
@_opt("--num_gpus", type=int, default=0, show_default=True, help="GPUs to use (>= 1 worker each).")
@_opt("--method", type=click.Choice(["vptq", "rtn", "gptq"]), default="vptq", show_default=True)
@_opt(
    "--vector_lens",
    type=_PAIR,
    default=(-1, 6),
    show_default=True,
    help="Outlier and main vector length.",
)
@_opt(
    "--num_centroids",
    type=_PAIR,
    default=(-1, 4096),
    show_default=True,
    help="Outlier (-1: keep float) and main centroids.",
)
@_opt(
    "--num_res_centroids",
    type=_PAIR,
    default=(-1, -1),
    show_default=True,
    help="Residual centroids (-1: off).",
)
@_opt("--npercent", type=float, default=0.0, show_default=True, help="Outlier columns, %.")
@_opt("--group_num", type=int, default=1, show_default=True, help="Codebooks per layer.")
@_opt("--kiter", type=int, default=100, show_default=True, help="k-means iterations.")
@_opt("--ktol", type=float, default=1e-5, show_default=True, help="k-means tolerance.")
@_opt("--kseed", type=int, default=0, show_default=True, help="k-means seed.")
@_opt(
    "--kmeans_precision",
    type=click.Choice(KMEANS_PRECISIONS),
    default="fp32",
    show_default=True,
    help="Distance precision of the GPU k-means: tf32x1 scores on tensor cores and re-ranks "
    "each point's 16 best candidates in fp32 (several times faster than fp32 at large K); "
    "fp16x1 does the same with fp16 products on scaled operands (same precision as tf32x1, "
    "about 10% faster on an H100); tf32 splits each product in three. The CPU k-means is "
    "always fp32.",
)
@_opt("--blocksize", type=int, default=128, show_default=True, help="Sweep lazy-batch block.")
@_opt("--percdamp", type=float, default=0.01, show_default=True, help="Hessian damping.")
@_opt("--enable_perm", is_flag=True, help="Act-order column permutation.")
@_opt("--enable_norm", is_flag=True, help="Per-column min/max normalization.")
@_opt(
    "--vector_quant_dim",
    type=click.Choice(["in", "out"]),
    default=None,
    help="Vectors along the output (default) or input dimension.",
)
@_opt("--enable_transpose", is_flag=True, help="Reference name for --vector_quant_dim out.")
@_opt("--bitwidth", type=int, default=16, show_default=True, help="Codebook bits: 8 or 16.")
@_opt("--refine_centroids", is_flag=True, help="Refit centroids after the sweep.")
@_opt(
    "--dtype",
    type=click.Choice(["auto", "float16", "bfloat16"]),
    default="auto",
    show_default=True,
    help="Storage dtype of codebooks and scales.",
)
@_opt("--wbits", type=int, default=4, show_default=True, help="Scalar baseline bits.")
@_opt("--groupsize", type=int, default=-1, show_default=True, help="Scalar baseline group.")
@_opt("--hessian_path", type=click.Path(file_okay=False), help="Precomputed Hessian folder.")
@_opt("--inv_hessian_path", type=click.Path(file_okay=False), help="Inverse Hessian folder.")
@_opt("--save_model", is_flag=True, help="Also save the fake-quantized model under model/.")
@click.option(
    "--save_packed_model/--no_save_packed_model",
    "--save-packed-model/--no-save-packed-model",
    "save_packed_model",
    default=True,
    show_default=True,
)
@_opt(
    "--eval_dataset",
    default="wikitext2",
    show_default=True,
    help="Perplexity after quantization: wikitext2 | c4 | ptb | FILE | none.",
)
@_opt("--eval_seqlen", type=int, default=2048, show_default=True)
@_opt("--eval_limit", type=int, default=None, help="Evaluate only the first N windows.")
@_opt("--eval_base", is_flag=True, help="Also measure the unquantized model's perplexity.")
@_opt("--quiet", is_flag=True, help="No progress bars.")
@json_option
def quantize_cmd(**kw: Any) -> None:
    """Quantize MODEL with VPTQ and write a run folder (packed checkpoint, summary, logs)."""
    from vptq_rs.errors import InvalidValueError
    from vptq_rs.quantize.options import QuantOptions
    from vptq_rs.quantize.run import QuantizeInterrupted, RunOptions, run_quantize

    if kw["enable_transpose"] and kw["vector_quant_dim"] == "in":
        raise InvalidValueError("--enable_transpose contradicts --vector_quant_dim in")
    if kw["resume"] is None and not kw["model"]:
        raise InvalidValueError("--model is required (or --resume RUN_DIR)")
    if kw["resume"] is not None:
        _check_resume_flags()
    quant = QuantOptions(
        method=kw["method"],
        vector_lens=kw["vector_lens"],
        num_centroids=kw["num_centroids"],
        num_res_centroids=kw["num_res_centroids"],
        npercent=kw["npercent"],
        group_num=kw["group_num"],
        kiter=kw["kiter"],
        ktol=kw["ktol"],
        kseed=kw["kseed"],
        kmeans_precision=kw["kmeans_precision"],
        blocksize=kw["blocksize"],
        percdamp=kw["percdamp"],
        enable_perm=kw["enable_perm"],
        enable_norm=kw["enable_norm"],
        vector_quant_dim=kw["vector_quant_dim"] or "out",
        bitwidth=kw["bitwidth"],
        refine_centroids=kw["refine_centroids"],
        store_dtype=kw["dtype"],
        wbits=kw["wbits"],
        groupsize=kw["groupsize"],
    )
    eval_ds = None if str(kw["eval_dataset"]).lower() == "none" else kw["eval_dataset"]
    opts = RunOptions(
        model=kw["model"] or "",
        quant=quant,
        output_dir=kw["output_dir"],
        calib=kw["calib"],
        nsamples=kw["nsamples"],
        seq_len=kw["seq_len"],
        data_dir=kw["data_dir"],
        seed=kw["seed"],
        hessian_path=kw["hessian_path"],
        inv_hessian_path=kw["inv_hessian_path"],
        workers=kw["workers"],
        num_gpus=kw["num_gpus"],
        save_model=kw["save_model"],
        save_packed_model=kw["save_packed_model"],
        eval_dataset=eval_ds,
        eval_seqlen=kw["eval_seqlen"],
        eval_limit=kw["eval_limit"],
        eval_base=kw["eval_base"],
        progress=not kw["quiet"],
    )
    if kw["resume"] is None:
        opts.validate()
    try:
        run_dir = run_quantize(opts, resume=kw["resume"], overwrite=kw["overwrite"])
    except QuantizeInterrupted as exc:
        click.echo(
            f"interrupted; finished layers are kept. Resume with:\n"
            f"  vptq-rs quantize --resume {exc.run_dir}",
            err=True,
        )
        raise
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    if kw["as_json"]:
        echo_json({"run_dir": str(run_dir), **summary})
        return
    click.echo(f"run folder: {run_dir}")
    bits = summary.get("bits", {})
    if "bpw" in bits:
        click.echo(f"bits per weight (all overheads): {bits['bpw']:.4f}")
    if "mean_proxy_final" in summary:
        click.echo(f"mean proxy error: {summary['mean_proxy_final']:.5f}")
    ppl = summary.get("ppl")
    if ppl:
        for key in ("base", "quantized"):
            if ppl.get(key):
                click.echo(f"{ppl['dataset']} perplexity ({key}): {_ppl_value(ppl[key])}")


# what may change when a run is resumed: how it runs, not what it computes
_RESUME_OK = {"resume", "workers", "num_gpus", "quiet", "as_json", "data_dir"}


def _check_resume_flags() -> None:
    """--resume takes every option from RUN_DIR/run.json; a differing flag is a conflict."""
    from click.core import ParameterSource

    from vptq_rs.errors import InvalidValueError

    ctx = click.get_current_context()
    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name not in _RESUME_OK
        and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    ]
    if given:
        raise InvalidValueError(
            f"--resume takes the run's options from RUN_DIR/run.json; drop {', '.join(given)}"
        )


def _ppl_value(res: Any) -> str:
    if isinstance(res, dict):
        val = res.get("ppl", res.get("perplexity"))
        return f"{val:.3f}" if isinstance(val, (int, float)) else str(res)
    return str(res)
