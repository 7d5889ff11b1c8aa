"""Knowledge distillation from the float teacher: KL divergence on next-token logits.

Teacher logits come from the teacher model on the fly, or from a disk cache of top-k
log-probabilities in chunks (:class:`TeacherCache`): full logits of a 49k-vocabulary model
are 200 MB per 2048-token window in fp16, top-64 about 0.8 MB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vptq_rs.errors import InvalidValueError


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Mean over tokens of ``KL(teacher || student)`` at ``temperature`` (times T²).

    Both: float ``[B, T, V]``. Computed in fp32.
    """
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return (p.exp() * (p - s)).sum(-1).mean() * t * t


def sparse_kl_loss(
    student_logits: torch.Tensor,
    top_logp: torch.Tensor,
    top_idx: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL from a top-k teacher (renormalised over its k tokens) to the student.

    student_logits: float ``[B, T, V]``; top_logp: float ``[B, T, k]`` teacher log-probs at
    temperature ``temperature``; top_idx: int64 ``[B, T, k]`` their token ids.
    """
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, top_idx)
    p_log = top_logp.float() - torch.logsumexp(top_logp.float(), dim=-1, keepdim=True)
    return (p_log.exp() * (p_log - s)).sum(-1).mean() * t * t


class TeacherCache:
    """Top-k teacher log-probs on disk, one safetensors file per ``chunk`` training windows.

    Files ``chunk-<n>.safetensors`` hold ``logp`` fp16 ``[chunk, T, k]`` and ``idx`` int32
    ``[chunk, T, k]`` for windows ``n*chunk .. (n+1)*chunk - 1`` of the window pool; a
    ``cache.json`` records k, temperature and the pool's fingerprint so a stale cache is
    refused rather than silently used.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        teacher: Any,
        windows: torch.Tensor,
        *,
        topk: int = 64,
        temperature: float = 1.0,
        chunk: int = 16,
        device: torch.device | str = "cpu",
    ) -> None:
        if topk < 1:
            raise InvalidValueError(f"teacher cache top-k must be >= 1, got {topk}")
        self.dir = Path(directory)
        self.teacher = teacher
        self.windows = windows
        self.topk, self.temperature, self.chunk = topk, temperature, chunk
        self.device = torch.device(device)
        self._loaded: tuple[int, dict[str, torch.Tensor]] | None = None
        meta = {
            "topk": topk,
            "temperature": temperature,
            "chunk": chunk,
            "windows": list(windows.shape),
            "fingerprint": int(windows[:, :8].sum().item()) * 31 + int(windows[:, -8:].sum()),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "cache.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if old != meta:
                raise InvalidValueError(
                    f"teacher cache {self.dir} was built for other windows or settings; "
                    "delete it or pass another directory"
                )
        else:
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def _chunk(self, n: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        if self._loaded is not None and self._loaded[0] == n:
            return self._loaded[1]
        path = self.dir / f"chunk-{n:05d}.safetensors"
        if not path.is_file():
            rows = self.windows[n * self.chunk : (n + 1) * self.chunk]
            logps, idxs = [], []
            with torch.no_grad():
                for row in rows:
                    logits = self.teacher(row[None].to(self.device), use_cache=False).logits
                    lp = F.log_softmax(logits.float() / self.temperature, dim=-1)
                    top = lp.topk(self.topk, dim=-1)
                    logps.append(top.values.half().cpu())
                    idxs.append(top.indices.to(torch.int32).cpu())
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            save_file({"logp": torch.cat(logps), "idx": torch.cat(idxs)}, str(tmp))
            tmp.replace(path)
        data = load_file(str(path))
        self._loaded = (n, data)
        return data

    def get(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher top-k ``(logp [B, T, k], idx int64 [B, T, k])`` of pool windows ``rows``."""
        logp, idx = [], []
        for r in rows:
            data = self._chunk(r // self.chunk)
            logp.append(data["logp"][r % self.chunk])
            idx.append(data["idx"][r % self.chunk].long())
        return torch.stack(logp), torch.stack(idx)
