"""Fine-tuning quantized models: codebook distillation from the float teacher, and LoRA.

Submodules: :mod:`.trainable` (differentiable dequantization, indices frozen),
:mod:`.distill` (KL loss, teacher cache), :mod:`.lora` (peft integration, adapters),
:mod:`.data` (training windows), :mod:`.export` (packed checkpoint out), :mod:`.loop`.
Importing this package imports torch but not transformers or peft.
"""

from __future__ import annotations

from vptq_rs.finetune.loop import MODES, FinetuneConfig, finetune
from vptq_rs.finetune.lora import load_adapter, load_with_adapter
from vptq_rs.finetune.trainable import TrainableVQuantLinear, make_trainable

__all__ = [
    "MODES",
    "FinetuneConfig",
    "TrainableVQuantLinear",
    "finetune",
    "load_adapter",
    "load_with_adapter",
    "make_trainable",
]
