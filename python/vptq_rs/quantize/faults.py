"""Named fault points for crash/resume tests: kill or interrupt a run at an exact place.

``VPTQ_RS_FAULT="point:N[:action],..."`` makes the N-th (1-based) time a run passes
``point`` kill it (``kill``: SIGKILL, no cleanup, like a lost machine), raise
KeyboardInterrupt (``interrupt``) or send itself SIGINT (``sigint``, like Ctrl-C).
Unset (the normal case), :func:`fault_point` is one dictionary lookup.

Points passed by a quantization run, in order: ``hessian_written`` (after each Hessian
file), ``layer_start`` (before a Linear is quantized), ``layer_kmeans`` (inside a Linear,
between k-means and the sweep), ``layer_stats_written`` (after a layer's ``.json``, before
its ``.safetensors``), ``layer_done``, ``pack_start``, ``before_rename`` (everything
written, the run folder still ``.partial``).
"""

from __future__ import annotations

import os
import signal

ENV = "VPTQ_RS_FAULT"
_counts: dict[str, int] = {}


def _plan() -> dict[str, tuple[int, str]]:
    spec = os.environ.get(ENV, "")
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        count, _, action = rest.partition(":")
        plan[name] = (int(count or 1), action or "kill")
    return plan


def reset() -> None:
    """Start counting afresh (called when a run starts, so in-process runs are independent)."""
    _counts.clear()


def fault_point(name: str) -> None:
    """Pass the named point; act if ``$VPTQ_RS_FAULT`` asks for it here."""
    if ENV not in os.environ:
        return
    target = _plan().get(name)
    if target is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != target[0]:
        return
    action = target[1]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "interrupt":
        raise KeyboardInterrupt
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} (kill, sigint, interrupt)")
