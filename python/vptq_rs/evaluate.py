"""Perplexity by the GPTQ/VPTQ protocol (``../shared/data/SOURCES.md``).

The evaluation text is tokenized once without added special tokens, cut into
non-overlapping windows of ``seqlen`` tokens (the tail is dropped), and the perplexity is
``exp(mean over windows of the window's mean next-token NLL)``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from vptq_rs.data import eval_text
from vptq_rs.errors import InvalidValueError


def tokenize_corpus(tokenizer: Any, text: str) -> Any:
    """Token ids of ``text`` as int64 ``[1, N]`` (no BOS/EOS added)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64).unsqueeze(0)


def perplexity(
    model: Any,
    tokenizer: Any,
    dataset: str,
    seqlen: int = 2048,
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of a causal LM on ``dataset`` (wikitext2 | c4 | ptb | path of a text file).

    Windows: ``seqlen`` tokens each, the first ``limit`` of them (all when None).
    Returns a JSON-ready dict: dataset, seqlen, windows, total_windows, tokens, ppl,
    mean_nll, nll_per_window, seconds.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if seqlen < 2:
        raise InvalidValueError(f"seqlen must be >= 2, got {seqlen}")
    if limit is not None and limit < 1:
        raise InvalidValueError(f"limit must be >= 1, got {limit}")
    ids = tokenize_corpus(tokenizer, eval_text(dataset, data_dir))
    total = ids.shape[1] // seqlen
    if total == 0:
        raise InvalidValueError(
            f"{dataset}: {ids.shape[1]} tokens is less than one window of {seqlen}"
        )
    windows = min(total, limit) if limit else total
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nlls: list[float] = []
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for i in tqdm(
                range(windows), desc=f"ppl {Path(dataset).name}", unit="win", disable=not progress
            ):
                batch = ids[:, i * seqlen : (i + 1) * seqlen].to(device)
                logits = model(batch, use_cache=False).logits[0, :-1].float()
                nll = F.cross_entropy(logits, batch[0, 1:], reduction="mean")
                nlls.append(float(nll))
    finally:
        model.train(was_training)
    mean_nll = sum(nlls) / len(nlls)
    return {
        "dataset": dataset,
        "seqlen": seqlen,
        "windows": windows,
        "total_windows": total,
        "tokens": int(ids.shape[1]),
        "ppl": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "nll_per_window": nlls,
        "seconds": time.perf_counter() - start,
    }


def save_results(path: str | os.PathLike[str], result: dict[str, Any], model: str) -> Path:
    """Merge ``result`` into the JSON file at ``path`` (keyed ``<dataset>@<seqlen>``).

    The file maps keys to results, so evaluating several corpora accumulates; it is written
    to a temporary name and renamed.
    """
    path = Path(path)
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
    key = f"{Path(result['dataset']).name}@{result['seqlen']}"
    if result.get("windows") != result.get("total_windows"):
        key += f"/limit{result['windows']}"
    data[key] = {"model": model, **result}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
