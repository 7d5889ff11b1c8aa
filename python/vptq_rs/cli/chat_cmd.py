"""``vptq-rs chat``: multi-turn chat with a float, packed or GGUF model, streamed.

Reads one user turn per line from stdin (so it works interactively and from a pipe);
``/reset`` clears the history, ``/exit`` (or end of input) quits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vptq_rs.cli._common import adapter_option
from vptq_rs.cli.generate_cmd import (
    EchoStreamer,
    cache_option,
    device_option,
    dtype_option,
    generation_kwargs,
    sampling_options,
    sorted_option,
)


@click.command("chat")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--system", default=None, help="System message opening the conversation.")
@sampling_options
@dtype_option
@device_option
@cache_option
@sorted_option
@adapter_option
def chat_cmd(
    model: Path,
    system: str | None,
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
    """Chat with MODEL using its chat template; one user turn per input line.

    Commands: /reset (forget the conversation), /exit (quit; so does end of input).
    """
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
    if not getattr(tokenizer, "chat_template", None):
        raise click.BadParameter(f"{model}: the tokenizer has no chat template", param_hint="MODEL")
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    torch.manual_seed(seed)
    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    click.echo("chat: /reset clears the conversation, /exit quits", err=True)
    while True:
        click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            click.echo(err=True)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(opening)
            click.echo("(conversation cleared)", err=True)
            continue
        messages.append({"role": "user", "content": text})
        enc = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = enc["input_ids"].to(net.device)
        with torch.inference_mode():
            out = net.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                streamer=EchoStreamer(tokenizer).streamer,
                **kwargs,
            )
        reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply.strip()})
