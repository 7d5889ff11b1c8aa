"""The fine-tuning loop: codebook distillation, LoRA, or both, resumable from saved steps.

Output folder ``OUT``:
    packed_model/    the fine-tuned packed checkpoint (modes codebooks, both)
    adapter/         peft adapters (modes lora, both)
    checkpoints/step-NNNNNN/  trainable.safetensors, optimizer.pt, state.json (last 2 kept)
    finetune.json    settings, loss per step, timings
Each step sees ``batch_size`` windows, one forward/backward at a time (gradient
accumulation), so memory is that of a single window whatever the batch size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_rs.errors import InvalidValueError
from vptq_rs.finetune.data import TrainingWindows, training_windows
from vptq_rs.finetune.distill import TeacherCache, kl_loss, sparse_kl_loss
from vptq_rs.finetune.trainable import TrainableVQuantLinear, codebook_parameters, make_trainable

logger = logging.getLogger(__name__)

MODES = ("codebooks", "lora", "both")
EXTRAS = ("norms", "embeddings", "head")
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
# settings a resumed run must share with the saved one (steps and save_every may change)
_RESUME_KEYS = ("packed_dir", "mode", "data", "seq_len", "batch_size", "seed", "num_windows")


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the CLI's flags)."""

    packed_dir: str
    teacher: str
    out: str
    data: str = "c4"
    mode: str = "codebooks"
    steps: int = 100
    lr: float = 1e-4
    lora_lr: float | None = None
    batch_size: int = 4
    seq_len: int = 2048
    num_windows: int | None = None
    data_dir: str | None = None
    seed: int = 0
    save_every: int = 50
    resume: bool = False
    stop_after: int | None = None
    temperature: float = 1.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    train_extra: tuple[str, ...] = ()
    train_layer_bias: bool = True
    lora_r: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = True
    precision: str = "auto"
    device: str | None = None
    teacher_cache: str | None = None
    cache_topk: int = 64
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.mode not in MODES:
            raise InvalidValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("steps", "batch_size", "save_every", "lora_r"):
            if getattr(self, name) < 1:
                raise InvalidValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise InvalidValueError(f"stop_after must be >= 1, got {self.stop_after}")
        if self.seq_len < 2:
            raise InvalidValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.lr <= 0 or (self.lora_lr is not None and self.lora_lr <= 0):
            raise InvalidValueError("learning rates must be positive")
        bad = [e for e in self.train_extra if e not in EXTRAS]
        if bad:
            raise InvalidValueError(f"--train-extra takes {', '.join(EXTRAS)}; got {bad}")
        if self.train_extra and self.mode == "lora":
            raise InvalidValueError("--train-extra needs --mode codebooks or both")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InvalidValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")

    def windows_needed(self) -> int:
        return self.num_windows or self.steps * self.batch_size


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked, or on 'auto' where it is fast (CUDA with bf16 support); else None."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak (a pure function of the step)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _mark_trainable(net: nn.Module, cfg: FinetuneConfig) -> None:
    """Set requires_grad on what the mode trains (after peft wrapping, which freezes the rest)."""
    if cfg.mode not in ("codebooks", "both"):
        return
    for mod in net.modules():
        if isinstance(mod, TrainableVQuantLinear):
            for p in codebook_parameters(mod, with_bias=cfg.train_layer_bias).values():
                p.requires_grad_(True)
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    picked: list[nn.Parameter] = []
    for mod in base.modules():
        if "norms" in cfg.train_extra and "norm" in type(mod).__name__.lower():
            picked += list(mod.parameters(recurse=False))
    if "embeddings" in cfg.train_extra:
        picked += list(base.get_input_embeddings().parameters())
    if "head" in cfg.train_extra:
        head = base.get_output_embeddings()
        if head is None:
            raise InvalidValueError("--train-extra head: the model has no output head")
        picked += list(head.parameters())
    for p in picked:
        if p.is_floating_point():
            p.requires_grad_(True)


def _trainable(net: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


def _optimizer(net: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    lora, rest = [], []
    for name, p in _trainable(net).items():
        (lora if ".lora_" in name else rest).append(p)
    groups = []
    if rest:
        groups.append({"params": rest, "lr": cfg.lr, "name": "quantized"})
    if lora:
        groups.append({"params": lora, "lr": cfg.lora_lr or cfg.lr, "name": "lora"})
    if not groups:
        raise InvalidValueError("nothing to train: the model has no trainable parameters")
    # no weight decay: codebook entries are weights, not a regularised residual
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)


# -- resumable state ------------------------------------------------------------------------


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())


def _save_state(
    out: Path,
    step: int,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: FinetuneConfig,
    history: list[dict[str, Any]],
) -> Path:
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        params = {n: p.detach().cpu().contiguous() for n, p in _trainable(net).items()}
        save_file(params, str(tmp / "trainable.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        state = {"step": step, "config": _config_json(cfg), "history": history}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in _checkpoint_dirs(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _load_state(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, cfg: FinetuneConfig
) -> tuple[int, list[dict[str, Any]]]:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    saved = state["config"]
    mine = _config_json(cfg)
    diff = [k for k in _RESUME_KEYS if saved.get(k) != mine.get(k)]
    if diff:
        raise InvalidValueError(
            f"cannot resume from {path}: settings differ ({', '.join(diff)}); "
            "use the same ones or a new --out"
        )
    params = load_file(str(path / "trainable.safetensors"))
    mine_params = _trainable(net)
    if set(params) != set(mine_params):
        raise InvalidValueError(f"cannot resume from {path}: it trained other parameters")
    with torch.no_grad():
        for name, p in mine_params.items():
            p.copy_(params[name].to(p.device, p.dtype))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(state["step"]), list(state["history"])


def _config_json(cfg: FinetuneConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["train_extra"] = list(cfg.train_extra)
    d["num_windows"] = cfg.windows_needed()
    return d


# -- the run --------------------------------------------------------------------------------


def load_student(cfg: FinetuneConfig, device: torch.device) -> tuple[nn.Module, Any]:
    """The packed model in fp32 (master weights) with trainable quantized layers."""
    from vptq_rs.checkpoint import is_packed, load_model

    if not is_packed(cfg.packed_dir):
        raise InvalidValueError(f"{cfg.packed_dir} is not a packed VPTQ checkpoint folder")
    model, tokenizer = load_model(cfg.packed_dir, dtype=torch.float32, device=device)
    if not make_trainable(model):
        raise InvalidValueError(f"{cfg.packed_dir}: no quantized layers found")
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing per decoder layer (transformers 5 name first)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5.20
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run fine-tuning as ``cfg`` says; returns the summary also written to finetune.json."""
    from tqdm import tqdm

    from vptq_rs.checkpoint import load_model
    from vptq_rs.finetune import export, lora

    cfg.check()
    out = Path(cfg.out)
    saved = _checkpoint_dirs(out)
    if saved and not cfg.resume:
        raise InvalidValueError(f"{out} holds saved steps; pass --resume or use a new --out")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = _autocast_dtype(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()

    student, tokenizer = load_student(cfg, device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(student)
    student.config.use_cache = False
    net: nn.Module = student
    if cfg.mode in ("lora", "both"):
        lcfg = lora.lora_config(
            student, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout
        )
        net = lora.add_lora(student, lcfg)
    _mark_trainable(net, cfg)
    opt = _optimizer(net, cfg)
    n_train = sum(p.numel() for p in _trainable(net).values())

    teacher_dtype = amp or torch.float32
    teacher, _ = load_model(cfg.teacher, dtype=teacher_dtype, device=device)
    windows: TrainingWindows = training_windows(
        tokenizer, cfg.data, cfg.seq_len, cfg.windows_needed(), seed=cfg.seed, data_dir=cfg.data_dir
    )
    cache = None
    if cfg.teacher_cache:
        cache = TeacherCache(
            cfg.teacher_cache,
            teacher,
            windows.windows,
            topk=cfg.cache_topk,
            temperature=cfg.temperature,
            device=device,
        )

    start, history = 0, []
    if cfg.resume and saved:
        start, history = _load_state(saved[-1], net, opt, cfg)
        logger.info("resumed from %s (step %d)", saved[-1], start)
    elif cfg.resume:
        logger.warning("no saved step under %s; starting from step 0", out / CHECKPOINTS)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    net.train()
    teacher.eval()
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    bar = tqdm(
        range(start, end),
        total=cfg.steps,
        initial=start,
        desc=f"finetune {cfg.mode}",
        unit="step",
        disable=not cfg.progress,
    )
    t_train = time.perf_counter()
    for step in bar:
        factor = _lr_factor(step, cfg.steps, cfg.warmup_steps)
        for group in opt.param_groups:
            peak = (cfg.lora_lr or cfg.lr) if group.get("name") == "lora" else cfg.lr
            group["lr"] = peak * factor
        rows = windows.rows(step, cfg.batch_size)
        total = 0.0
        for row in rows:
            ids = windows.windows[row : row + 1].to(device)
            with autocast():
                logits = net(input_ids=ids, use_cache=False).logits
            if cache is not None:
                logp, idx = cache.get([row])
                loss = sparse_kl_loss(logits, logp.to(device), idx.to(device), cfg.temperature)
            else:
                with torch.no_grad(), autocast():
                    t_logits = teacher(ids, use_cache=False).logits
                if t_logits.shape[-1] != logits.shape[-1]:
                    raise InvalidValueError(
                        f"teacher vocabulary {t_logits.shape[-1]} != student {logits.shape[-1]}"
                    )
                loss = kl_loss(logits, t_logits, cfg.temperature)
            (loss / len(rows)).backward()
            total += float(loss.detach()) / len(rows)
            del logits, loss
        if not math.isfinite(total):
            raise InvalidValueError(f"loss became {total} at step {step + 1}; lower --lr")
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(list(_trainable(net).values()), cfg.grad_clip)
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(
            {"step": step + 1, "loss": total, "lr_factor": factor, "grad_norm": grad_norm}
        )
        bar.set_postfix(loss=f"{total:.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            _save_state(out, step + 1, net, opt, cfg, history)
    bar.close()
    train_seconds = time.perf_counter() - t_train

    net.eval()
    result: dict[str, Any] = {
        "config": _config_json(cfg),
        "device": str(device),
        "autocast": str(amp).removeprefix("torch.") if amp else None,
        "trainable_parameters": n_train,
        "start_step": start,
        "history": history,
        "finished": end == cfg.steps,
        "train_seconds_this_run": train_seconds,
        "seconds_this_run": None,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if end < cfg.steps:
        logger.info("stopped after step %d of %d; continue with --resume", end, cfg.steps)
    elif cfg.mode in ("codebooks", "both"):
        packed = export.save_finetuned(net, cfg.packed_dir, out / "packed_model", overwrite=True)
        report = export.validate(packed)
        result["packed_model"] = str(packed)
        if report is not None:
            result["bits_per_weight"] = report["total"]["bits_per_weight"]
    if end == cfg.steps and cfg.mode in ("lora", "both"):
        base = str(out / "packed_model") if cfg.mode == "both" else str(cfg.packed_dir)
        result["adapter"] = str(lora.save_adapter(net, out / "adapter", base=base))
        result["adapter_base"] = base
    result["seconds_this_run"] = time.perf_counter() - t_start
    tmp = out / f".finetune.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / "finetune.json")
    return result
