"""Training windows for fine-tuning, in an order that depends only on (seed, step).

Text comes from :func:`vptq_rs.data.calibration_windows`, so the SOURCES.md rules hold:
C4 documents 0-999 only, the WikiText-2 validation split, or a user's text file; never test
text. Because the batch of step ``s`` is a pure function of ``s``, resuming from a saved
step replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch

from vptq_rs.data import calibration_windows
from vptq_rs.errors import InvalidValueError


class TrainingWindows:
    """A fixed pool of token windows, int64 ``[N, seq_len]``, served in seeded epochs."""

    def __init__(self, windows: torch.Tensor, seed: int = 0) -> None:
        if windows.ndim != 2 or windows.shape[0] < 1:
            raise InvalidValueError(f"need a [N, seq_len] window tensor, got {list(windows.shape)}")
        self.windows = windows
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch cached: steps only move forward
        return self._orders[epoch]

    def rows(self, step: int, batch_size: int) -> list[int]:
        """Pool rows of optimisation step ``step`` (0-based)."""
        out = []
        for i in range(step * batch_size, (step + 1) * batch_size):
            epoch, pos = divmod(i, len(self))
            out.append(self._order(epoch)[pos])
        return out

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Windows of optimisation step ``step``: int64 ``[batch_size, seq_len]``."""
        return self.windows[self.rows(step, batch_size)]


def training_windows(
    tokenizer: Any,
    dataset: str,
    seq_len: int,
    count: int,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> TrainingWindows:
    """``count`` random windows of ``seq_len`` tokens from ``dataset`` (c4 | wikitext2 | FILE)."""
    if dataset in ("ptb",):
        raise InvalidValueError("fine-tune on c4, wikitext2 or a text file")
    ids = calibration_windows(tokenizer, dataset, count, seq_len, seed=seed, data_dir_=data_dir)
    return TrainingWindows(torch.tensor(ids, dtype=torch.int64), seed=seed)
