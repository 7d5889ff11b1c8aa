"""``vptq-rs finetune``: codebook distillation and/or LoRA on a packed checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from vptq_rs.cli._common import data_dir_option, echo_json, json_option


@click.command("finetune")
@click.argument("packed_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--teacher",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The float model (folder or .gguf) to distil from.",
)
@click.option(
    "--data",
    default="c4",
    show_default=True,
    help="c4 (documents 0-999), wikitext2 (validation split) or a text file.",
)
@click.option(
    "--mode",
    type=click.Choice(["codebooks", "lora", "both"]),
    default="codebooks",
    show_default=True,
    help="codebooks: train centroids and scale/bias with indices frozen; lora: adapters only.",
)
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option(
    "--lora-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate of the LoRA adapters (default: --lr).",
)
@click.option(
    "--batch-size",
    "--batch_size",
    "batch_size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Windows per optimisation step (accumulated one at a time).",
)
@click.option(
    "--seq-len", "--seq_len", "seq_len", type=click.IntRange(min=2), default=2048, show_default=True
)
@click.option(
    "--num-windows",
    type=click.IntRange(min=1),
    default=None,
    help="Size of the training window pool (default: steps x batch size; reused in epochs).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: packed_model/, adapter/, checkpoints/, finetune.json.",
)
@click.option("--resume", is_flag=True, help="Continue from the last saved step in --out.")
@click.option(
    "--stop-after",
    type=click.IntRange(min=1),
    default=None,
    help="Save and stop after this step (schedule unchanged); continue later with --resume.",
)
@click.option("--save-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--train-extra",
    type=click.Choice(["norms", "embeddings", "head"]),
    multiple=True,
    help="Also train these unquantized parts (repeatable; codebooks/both modes).",
)
@click.option(
    "--freeze-layer-bias",
    is_flag=True,
    help="Keep the quantized Linears' own biases fixed (trained by default in codebooks mode).",
)
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-alpha", type=click.IntRange(min=1), default=None, help="Default: 2 x rank.")
@click.option("--lora-dropout", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--grad-clip", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="auto: bf16 autocast on GPUs that support it, fp32 elsewhere.",
)
@click.option(
    "--no-checkpointing", is_flag=True, help="Disable activation checkpointing (more memory)."
)
@click.option(
    "--teacher-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache the teacher's top-k log-probs in this folder instead of running it each step.",
)
@click.option("--cache-topk", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available).")
@click.option("--seed", type=int, default=0, show_default=True)
@data_dir_option
@json_option
def finetune_cmd(
    packed_dir: Path,
    teacher: Path,
    data: str,
    mode: str,
    steps: int,
    lr: float,
    lora_lr: float | None,
    batch_size: int,
    seq_len: int,
    num_windows: int | None,
    out: Path,
    resume: bool,
    stop_after: int | None,
    save_every: int,
    train_extra: tuple[str, ...],
    freeze_layer_bias: bool,
    lora_r: int,
    lora_alpha: int | None,
    lora_dropout: float,
    temperature: float,
    warmup_steps: int,
    grad_clip: float,
    precision: str,
    no_checkpointing: bool,
    teacher_cache: Path | None,
    cache_topk: int,
    device: str | None,
    seed: int,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Fine-tune the packed model in PACKED_DIR by distillation from --teacher.

    Indices stay frozen. codebooks mode trains centroids (main, residual, outlier) and
    normalization scale/bias on the KL divergence to the teacher's logits and writes
    OUT/packed_model in the same format; lora mode trains peft adapters (OUT/adapter, load
    with --adapter); both does both.
    """
    from vptq_rs.finetune.loop import FinetuneConfig, finetune

    if data not in ("c4", "wikitext2") and not Path(data).is_file():
        raise click.BadParameter(
            f"{data!r} is neither c4, wikitext2 nor an existing file", param_hint="--data"
        )
    cfg = FinetuneConfig(
        packed_dir=str(packed_dir),
        teacher=str(teacher),
        out=str(out),
        data=data,
        mode=mode,
        steps=steps,
        lr=lr,
        lora_lr=lora_lr,
        batch_size=batch_size,
        seq_len=seq_len,
        num_windows=num_windows,
        data_dir=data_dir,
        seed=seed,
        save_every=save_every,
        resume=resume,
        stop_after=stop_after,
        temperature=temperature,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        train_extra=tuple(train_extra),
        train_layer_bias=not freeze_layer_bias,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        gradient_checkpointing=not no_checkpointing,
        precision=precision,
        device=device,
        teacher_cache=str(teacher_cache) if teacher_cache else None,
        cache_topk=cache_topk,
    )
    result = finetune(cfg)
    if as_json:
        echo_json(
            {k: v for k, v in result.items() if k != "history"} | {"final": result["history"][-1:]}
        )
        return
    hist = result["history"]
    first = next((h["loss"] for h in hist if h["step"] == 1), None)
    last = hist[-1]["loss"] if hist else float("nan")
    head = f"loss {first:.4f} -> {last:.4f}" if first is not None else f"loss {last:.4f}"
    click.echo(f"finetune {mode}: {len(hist)} steps, {head}")
    if not result["finished"]:
        click.echo(f"stopped at step {hist[-1]['step']} of {steps}; continue with --resume")
    for key in ("packed_model", "adapter"):
        if key in result:
            click.echo(f"wrote {result[key]}")
