"""``vptq-rs generate``: stream a completion from a float, packed or GGUF model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vptq_rs.cli._common import adapter_option

dtype_option = click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default=None,
    help="Compute dtype (default: fp32 on CPU, the checkpoint's dtype on GPU).",
)
device_option = click.option(
    "--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)."
)
cache_option = click.option(
    "--cache-weights",
    is_flag=True,
    help="Keep dequantized weights in memory (faster, uses as much memory as the float model).",
)

sorted_option = click.option(
    "--sorted-gemv",
    is_flag=True,
    help="Decode (one token per step, CUDA only) through a GEMV over a code-sorted copy of the "
    "indices, on the layers where it pays: the sorted kernel (one group, rows at least as wide "
    "as the codebook, a residual codebook only on large layers; about 1.9x the packed bytes at "
    "12-bit codes on rows of 8192 columns, 2.9x at 4096) or, for codebooks wider than a row on "
    "large layers, the tiled kernel (2x the packed bytes at 16-bit codes).",
)


def sampling_options(f: Any) -> Any:
    """--max-new-tokens, --temperature, --top-p, --seed."""
    f = click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")(f)
    f = click.option(
        "--top-p",
        type=click.FloatRange(0, 1, min_open=True),
        default=1.0,
        show_default=True,
        help="Nucleus sampling mass.",
    )(f)
    f = click.option(
        "--temperature",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="0 = greedy decoding.",
    )(f)
    f = click.option(
        "--max-new-tokens",
        "--max_new_tokens",
        "max_new_tokens",
        type=click.IntRange(min=1),
        default=128,
        show_default=True,
    )(f)
    return f


def generation_kwargs(
    tokenizer: Any, max_new_tokens: int, temperature: float, top_p: float
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.eos_token_id
    return kwargs


class EchoStreamer:
    """A ``TextStreamer`` that writes through ``click.echo`` (so tests can capture it)."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import TextStreamer

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                click.echo(text, nl=stream_end)

        self.streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@click.command("generate")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--prompt", "-p", required=True, help="Text to continue.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template.")
@sampling_options
@dtype_option
@device_option
@cache_option
@sorted_option
@adapter_option
def generate_cmd(
    model: Path,
    prompt: str,
    chat: bool,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    dtype: str | None,
    device: str | None,
    cache_weights: bool,
    sorted_gemv: bool,
    adapter: Path | None,
) -> None:
    """Continue PROMPT with MODEL (float folder, packed folder, or .gguf), streamed to stdout."""
    import torch

    from vptq_rs.finetune.lora import load_with_adapter

    net, tokenizer = load_with_adapter(
        model,
        adapter,
        dtype=dtype,
        device=device,
        cache_weights=cache_weights,
        sorted_gemv=sorted_gemv,
    )
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise click.BadParameter("the tokenizer has no chat template", param_hint="--chat")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        click.echo(prompt, nl=False)
    torch.manual_seed(seed)
    streamer = EchoStreamer(tokenizer).streamer
    with torch.inference_mode():
        net.generate(
            ids.to(net.device),
            attention_mask=torch.ones_like(ids).to(net.device),
            streamer=streamer,
            **generation_kwargs(tokenizer, max_new_tokens, temperature, top_p),
        )
