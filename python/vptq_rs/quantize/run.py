"""A whole quantization run: Hessians, every layer (resumable, optionally in workers), outputs.

Run folder (DESIGN.md): ``OUTPUT/<model-name>/v<v>_c<K>/<timestamp>/`` holding ``run.json``
(model + every option, so ``vptq-rs pack`` and ``--resume`` can rebuild the run),
``logs/worker<i>.log``, ``hessians/`` (when collected here), ``layers/<module>.safetensors``
(one finished layer each, written atomically, plus ``<module>.json`` with its measurements),
``packed_model/``, ``model/`` (``--save_model``), ``summary.json`` and ``ppl_results.json``.
While running the folder is named ``<timestamp>.partial``; it is renamed when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptq_rs.errors import CheckpointError, InvalidValueError, VptqIOError
from vptq_rs.quantize import faults
from vptq_rs.quantize.faults import fault_point
from vptq_rs.quantize.options import QuantOptions

log = logging.getLogger(__name__)
PARTIAL = ".partial"
_TENSOR_FIELDS = (
    "centroids",
    "main_idx",
    "weight_scale",
    "weight_bias",
    "res_centroids",
    "res_idx",
    "outlier_centroids",
    "outlier_idx",
    "perm",
    "bias",
)


@dataclass(frozen=True)
class RunOptions:
    """Everything ``vptq-rs quantize`` needs besides the layer options."""

    model: str
    quant: QuantOptions = field(default_factory=QuantOptions)
    output_dir: str = "outputs"
    calib: str = "c4"
    nsamples: int = 128
    seq_len: int = 2048
    data_dir: str | None = None
    seed: int = 0
    hessian_path: str | None = None
    inv_hessian_path: str | None = None
    workers: int = 1
    num_gpus: int = 0
    save_model: bool = False
    save_packed_model: bool = True
    eval_dataset: str | None = "wikitext2"
    eval_seqlen: int = 2048
    eval_limit: int | None = None
    eval_base: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Cheap checks of every value (before any model is loaded)."""

        def bad(msg: str) -> None:
            raise InvalidValueError(msg)

        if self.nsamples < 1:
            bad(f"--nsamples must be >= 1, got {self.nsamples}")
        if self.seq_len < 2:
            bad(f"--seq-len must be >= 2, got {self.seq_len}")
        if self.workers < 1:
            bad(f"--workers must be >= 1, got {self.workers}")
        if self.num_gpus < 0:
            bad(f"--num_gpus must be >= 0, got {self.num_gpus}")
        if self.eval_seqlen < 2:
            bad(f"--eval-seqlen must be >= 2, got {self.eval_seqlen}")
        if self.eval_limit is not None and self.eval_limit < 1:
            bad(f"--eval-limit must be >= 1, got {self.eval_limit}")
        if self.seed < 0:
            bad(f"--seed must be >= 0, got {self.seed}")
        for flag, p in (
            ("--hessian_path", self.hessian_path),
            ("--inv_hessian_path", self.inv_hessian_path),
        ):
            if p is not None and not Path(p).is_dir():
                bad(f"{flag}: folder {p} does not exist")
        corpora = ("c4", "wikitext2", "ptb")
        if (
            self.hessian_path is None
            and self.calib not in corpora
            and not Path(self.calib).is_file()
        ):
            bad(f"--calib must be c4, wikitext2, ptb or an existing file, got {self.calib}")
        if self.hessian_path is None and self.calib in ("c4", "wikitext2", "ptb"):
            from vptq_rs.data import data_dir

            data_dir(self.data_dir)  # raises with the fix when the corpora are missing
        if self.num_gpus > 0:
            import torch

            have = torch.cuda.device_count()
            if have < self.num_gpus:
                bad(f"--num_gpus {self.num_gpus} but only {have} CUDA device(s) visible")
        self.quant.validate()

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["quant"] = self.quant.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["quant"] = QuantOptions.from_json(d.get("quant", {}))
        return cls(**kw)


# ---------------------------------------------------------------- per-layer files


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VptqIOError(f"cannot write {path}: {exc.strerror or exc}") from exc


def save_layer_result(path: str | os.PathLike[str], layer: Any, dense: Any = None) -> None:
    """Write one finished layer atomically as safetensors.

    Keys are the QuantizedLayer field names; metadata ``config`` is the LayerConfig as JSON
    (``dataclasses.asdict``). For scalar baselines that no codebook layer can express, pass
    ``layer=None`` and the fake-quantized ``dense`` weight ``[O, I]`` (key ``dense_weight``).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one metadata key only: safetensors writes metadata in hash order, and identical runs
    # must give identical bytes
    meta: dict[str, str] = {}
    if layer is not None:
        tensors = {
            f: getattr(layer, f).contiguous()
            for f in _TENSOR_FIELDS
            if getattr(layer, f) is not None
        }
        meta["config"] = json.dumps(dataclasses.asdict(layer.config), sort_keys=True)
    else:
        tensors = {"dense_weight": dense.contiguous()}
        meta["kind"] = "dense"
    assert len(meta) == 1
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VptqIOError(f"cannot write layer file {path}: {exc.strerror or exc}") from exc


def _read_layer_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"layer file {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"layer file {path} is not readable: {exc}") from exc
    if "config" not in meta and meta.get("kind") != "dense":
        raise CheckpointError(f"layer file {path} is not a vptq-rs layer file")
    return tensors, meta


def load_layer_result(path: str | os.PathLike[str]) -> Any:
    """Read a layer file written by :func:`save_layer_result` -> QuantizedLayer (validated)."""
    from vptq_rs.layout import LayerConfig, QuantizedLayer

    tensors, meta = _read_layer_file(Path(path))
    if meta.get("kind") == "dense":
        raise CheckpointError(
            f"layer file {path} holds a dense scalar-baseline weight (no codebook layer)"
        )
    try:
        cfg = LayerConfig(**json.loads(meta["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"layer file {path}: bad config metadata: {exc}") from exc
    layer = QuantizedLayer(config=cfg, **{k: tensors.get(k) for k in _TENSOR_FIELDS})
    try:
        layer.validate()
    except InvalidValueError as exc:
        raise CheckpointError(f"layer file {path}: {exc}") from exc
    return layer


def load_layer_weight(path: str | os.PathLike[str], dtype: Any = None) -> Any:
    """The dense weight ``[O, I]`` a layer file stands for (either kind)."""
    tensors, meta = _read_layer_file(Path(path))
    if meta.get("kind") == "dense":
        w = tensors["dense_weight"]
        return w if dtype is None else w.to(dtype)
    import torch

    return load_layer_result(path).dequantize(dtype or torch.float32)


# ---------------------------------------------------------------- run folder


def run_dir_for(opts: RunOptions, stamp: str | None = None) -> Path:
    """``OUTPUT/<model-name>/v<v>_c<K>/<timestamp>`` (final name, without .partial)."""
    from vptq_rs.models import model_name

    q = opts.quant
    tag = f"v{q.v}_c{q.k}" if q.method == "vptq" else f"{q.method}_w{q.wbits}_g{q.groupsize}"
    if q.method == "vptq" and q.kres:
        tag += f"_r{q.kres}"
    stamp = stamp or time.strftime("%Y-%m-%d-%H-%M-%S")
    return Path(opts.output_dir) / model_name(opts.model) / tag / stamp


def _setup_logging(run_dir: Path, worker: int) -> logging.Handler:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f"worker{worker}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # the run log records INFO; console handlers keep the verbosity the user asked for
    top = logging.getLogger()
    for h in top.handlers:
        if h.level == logging.NOTSET:
            h.setLevel(top.level)
    pkg = logging.getLogger("vptq_rs")
    pkg.addHandler(handler)
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    return handler


def _layer_paths(run_dir: Path, name: str) -> tuple[Path, Path]:
    base = run_dir / "layers"
    return base / f"{name}.safetensors", base / f"{name}.json"


@dataclass
class _Job:
    name: str
    weight: Any
    bias: Any
    hessian_file: str
    inv_file: str | None
    quant: dict[str, Any]
    device: str
    run_dir: str


def _run_job(job: _Job) -> dict[str, Any]:
    """Quantize one Linear and write its files; returns its stats (also in a worker)."""
    from vptq_rs.hessian import load_hessian, load_inverse_hessian
    from vptq_rs.quantize.vptq import quantize_layer

    fault_point("layer_start")
    h, _, _ = load_hessian(job.hessian_file)
    inv = load_inverse_hessian(job.inv_file) if job.inv_file else None
    quant = QuantOptions.from_json(job.quant)
    res = quantize_layer(job.weight, h, quant, job.bias, inv, job.device, job.name)
    if job.device.startswith("cuda"):
        import torch

        # this process's running peak (never reset here: the run's phase peak reads it too);
        # the only GPU memory figure a worker process leaves behind
        res.stats["gpu_process_peak_bytes"] = torch.cuda.max_memory_allocated(job.device)
    st_path, js_path = _layer_paths(Path(job.run_dir), job.name)
    # measurements first: the safetensors file marks the layer as done
    _atomic_write_text(js_path, json.dumps(res.stats, indent=1, sort_keys=True))
    fault_point("layer_stats_written")
    dense = res.w_hat.to(job.weight.dtype) if res.layer is None else None
    save_layer_result(st_path, res.layer, dense)
    fault_point("layer_done")
    log.info(
        "%s: proxy error %.5f (%.1fs)",
        job.name,
        res.stats["proxy_final"],
        res.stats["time_total_s"],
    )
    return res.stats


_worker_state: dict[str, Any] = {}


def _worker_init(run_dir: str, threads: int, ids: Any, num_gpus: int) -> None:
    # workers share the cores: the Rust k-means pool (created on first use) gets this
    # worker's share instead of every core
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))
    import torch

    worker = ids.get()
    _worker_state["worker"] = worker
    _worker_state["num_gpus"] = num_gpus
    torch.set_num_threads(max(1, threads))
    _setup_logging(Path(run_dir), worker)


def worker_device(worker: int, num_gpus: int) -> str:
    """Device of 1-based worker ``worker``: ``cpu`` without GPUs, else GPUs round-robin.

    Several workers per GPU overlap their host-side work (the column sweep launches small
    kernels one column at a time, so one process leaves a large GPU mostly idle).
    """
    return "cpu" if num_gpus <= 0 else f"cuda:{(worker - 1) % num_gpus}"


def _worker_run(job: _Job) -> dict[str, Any]:
    if job.device.startswith("cuda"):
        job.device = worker_device(_worker_state["worker"], _worker_state["num_gpus"])
    return _run_job(job)


def _jobs(model: Any, opts: RunOptions, run_dir: Path, hdir: Path, device: str) -> Iterator[_Job]:
    from vptq_rs.hessian import hessian_file
    from vptq_rs.models import linear_groups

    for g in linear_groups(model):
        hf = hessian_file(hdir, g.layer_index, g.key)
        inv = None
        if opts.inv_hessian_path:
            inv = str(hessian_file(opts.inv_hessian_path, g.layer_index, g.key))
        for name in g.names:
            st, js = _layer_paths(run_dir, name)
            if st.is_file() and js.is_file():
                continue
            mod = model.get_submodule(name)
            yield _Job(
                name=name,
                weight=mod.weight.detach().cpu(),
                bias=None if mod.bias is None else mod.bias.detach().cpu(),
                hessian_file=str(hf),
                inv_file=inv,
                quant=opts.quant.to_json(),
                device=device,
                run_dir=str(run_dir),
            )


def _skeleton(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _check_layers_fit(model: Any, opts: RunOptions) -> list[str]:
    from vptq_rs.models import linear_groups

    names = []
    for g in linear_groups(model):
        for name in g.names:
            mod = model.get_submodule(name)
            opts.quant.check_layer(mod.out_features, mod.in_features, name)
            names.append(name)
    return names


def _check_hessian_files(model: Any, opts: RunOptions) -> None:
    """Every precomputed (inverse) Hessian file exists, loads safely and has the layer's size.

    Only headers and shapes are read (tensor data is memory-mapped), so a typo in
    ``--hessian_path`` or a truncated file fails before the run folder exists.
    """
    from vptq_rs.hessian import check_hessian_file, check_inverse_hessian_file, hessian_file
    from vptq_rs.models import linear_groups

    for g in linear_groups(model):
        n = model.get_submodule(g.names[0]).in_features
        if opts.hessian_path:
            check_hessian_file(hessian_file(opts.hessian_path, g.layer_index, g.key), n)
        if opts.inv_hessian_path:
            check_inverse_hessian_file(hessian_file(opts.inv_hessian_path, g.layer_index, g.key), n)


class QuantizeInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run whose finished work is kept in ``run_dir`` (resumable)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; resume with: vptq-rs quantize --resume {run_dir}")
        self.run_dir = run_dir


def _has_work(run_dir: Path) -> bool:
    """Whether a run folder holds finished work worth resuming (layers or Hessians)."""
    return any((run_dir / "layers").glob("*.safetensors")) or any(
        (run_dir / "hessians").glob("*.pt")
    )


def _remove_stale_temps(run_dir: Path) -> None:
    """Temporary files and folders a killed process left (``.name.tmp<pid>``, ``.x.tmp-*``)."""
    import shutil

    for sub in (run_dir, run_dir / "layers", run_dir / "hessians"):
        if not sub.is_dir():
            continue
        for p in sub.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise InvalidValueError(f"--resume: {run_dir} is not a folder")
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise InvalidValueError(f"--resume: {run_dir} has no run.json (not a vptq-rs run folder)")
    try:
        stored = json.loads(meta_path.read_text())
        return RunOptions.from_json(stored["options"]).to_json()
    except (ValueError, KeyError, TypeError) as exc:  # InvalidValueError is a ValueError
        raise InvalidValueError(f"--resume: {meta_path} is damaged: {exc}") from exc


def run_quantize(
    opts: RunOptions, resume: str | os.PathLike[str] | None = None, overwrite: bool = False
) -> Path:
    """Quantize a model end to end; returns the finished run folder.

    resume: an interrupted run folder (``*.partial`` or finished); its ``run.json``
    options are used, finished layers are kept, the result equals an uninterrupted run.
    overwrite: replace an existing run folder of the same name (only once the new run has
    finished; without it an existing folder is an error and nothing is touched).

    Everything that can be checked cheaply (options, architecture, layer shapes, Hessian
    files, the output folder) is checked before the run folder is created. A fresh run that
    fails later removes its ``.partial`` folder unless it holds finished work (Hessians or
    layers), which stays for ``--resume``; Ctrl-C raises :class:`QuantizeInterrupted`.
    """
    import torch

    from vptq_rs.models import load_config, load_model

    t0 = time.perf_counter()
    faults.reset()
    replace: Path | None = None
    if resume is not None:
        run_dir = Path(resume)
        stored = _read_run_json(run_dir)
        resumed = RunOptions.from_json(stored)
        opts = dataclasses.replace(
            resumed,
            workers=opts.workers,
            num_gpus=opts.num_gpus,
            progress=opts.progress,
            data_dir=opts.data_dir or resumed.data_dir,  # the corpora may have moved
        )
        opts.validate()
        skeleton = _skeleton(load_config(opts.model))
        _check_layers_fit(skeleton, opts)
        _check_hessian_files(skeleton, opts)
        _remove_stale_temps(run_dir)
        fresh = False
    else:
        opts.validate()
        # unsupported architectures and options that do not fit a layer's shape fail
        # before anything is written or loaded: check on a weightless (meta) skeleton
        skeleton = _skeleton(load_config(opts.model))
        _check_layers_fit(skeleton, opts)
        _check_hessian_files(skeleton, opts)
        out_root = Path(opts.output_dir)
        if out_root.exists() and not out_root.is_dir():
            raise InvalidValueError(f"--output_dir {out_root} exists and is not a folder")
        final = run_dir_for(opts)
        run_dir = final.with_name(final.name + PARTIAL)
        if final.exists():
            if not overwrite:
                raise InvalidValueError(
                    f"run folder {final} already exists (pass --overwrite to replace it)"
                )
            if not (final / "run.json").is_file():
                raise InvalidValueError(
                    f"{final} exists and is not a vptq-rs run folder: refusing to replace it"
                )
            replace = final
        if run_dir.exists():
            if not overwrite or not (run_dir / "run.json").is_file():
                raise InvalidValueError(
                    f"interrupted run {run_dir} exists: continue it with --resume {run_dir}"
                    " or pass --overwrite"
                )
            import shutil

            shutil.rmtree(run_dir)
        try:
            run_dir.mkdir(parents=True)
        except OSError as exc:
            raise VptqIOError(f"cannot create run folder {run_dir}: {exc.strerror or exc}") from exc
        meta = {
            "model": str(Path(opts.model).resolve()) if Path(opts.model).exists() else opts.model,
            "options": opts.to_json(),
            "format": "vptq-rs-run/1",
        }
        meta["options"]["model"] = meta["model"]
        fresh = True
    handler: logging.Handler | None = None
    try:
        if fresh:
            _atomic_write_text(run_dir / "run.json", json.dumps(meta, indent=1, sort_keys=True))
        handler = _setup_logging(run_dir, 0)
        return _run(opts, run_dir, t0, torch, load_model, replace)
    except BaseException as exc:
        kept = run_dir.exists() and (not fresh or _has_work(run_dir))
        if handler is not None:
            logging.getLogger("vptq_rs").removeHandler(handler)
            handler.close()
            handler = None
        if not kept and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt) and kept:
            raise QuantizeInterrupted(run_dir) from None
        if kept and isinstance(exc, Exception):
            log.error("finished work is kept: continue with vptq-rs quantize --resume %s", run_dir)
        raise
    finally:
        if handler is not None:
            logging.getLogger("vptq_rs").removeHandler(handler)
            handler.close()


def _run(
    opts: RunOptions,
    run_dir: Path,
    t0: float,
    torch: Any,
    load_model: Any,
    replace: Path | None = None,
) -> Path:
    from tqdm.auto import tqdm

    from vptq_rs.data import calibration_windows
    from vptq_rs.hessian import collect_hessians

    device = "cuda" if opts.num_gpus > 0 else "cpu"
    timings: dict[str, float] = {}
    _gpu_peak(device, None)  # start counting
    t = time.perf_counter()
    model, tok = load_model(opts.model)
    timings["load_model_s"] = time.perf_counter() - t
    names = _check_layers_fit(model, opts)
    log.info("run %s: %d linear layers, options %s", run_dir, len(names), opts.to_json())

    base_ppl = None
    if opts.eval_base:
        base_ppl = _perplexity(model, tok, opts, device)

    # ---- Hessians
    if opts.hessian_path:
        hdir = Path(opts.hessian_path)
    else:
        hdir = run_dir / "hessians"
        t = time.perf_counter()
        if tok is None:
            raise InvalidValueError("--model has no tokenizer: pass --hessian_path")
        windows = calibration_windows(
            tok, opts.calib, opts.nsamples, opts.seq_len, opts.seed, opts.data_dir
        )
        collect_hessians(
            model,
            windows,
            hdir,
            device=device if device == "cpu" else "cuda:0",
            progress=opts.progress,
        )
        timings["hessians_s"] = time.perf_counter() - t
        _gpu_peak(device, timings, "hessians")

    # ---- layers
    t = time.perf_counter()
    jobs = list(_jobs(model, opts, run_dir, hdir, device))
    done = len(names) - len(jobs)
    bar = tqdm(
        total=len(names), initial=done, desc="quantize", unit="layer", disable=not opts.progress
    )
    # --workers processes in all; with GPUs at least one per GPU, spread round-robin
    n_workers = max(opts.num_gpus, opts.workers)
    if n_workers <= 1 or len(jobs) <= 1:
        dev = "cuda:0" if device == "cuda" else "cpu"
        for job in jobs:
            job.device = dev
            st = _run_job(job)
            bar.set_postfix(layer=job.name.split(".", 2)[-1], err=f"{st['proxy_final']:.4f}")
            bar.update(1)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        ids = ctx.Manager().Queue()
        for i in range(n_workers):
            ids.put(i + 1)
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        with ProcessPoolExecutor(
            n_workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(str(run_dir), threads, ids, opts.num_gpus),
        ) as pool:
            futures = {pool.submit(_worker_run, job): job for job in jobs}
            for fut in as_completed(futures):
                st = fut.result()
                bar.set_postfix(layer=st["name"].split(".", 2)[-1], err=f"{st['proxy_final']:.4f}")
                bar.update(1)
    bar.close()
    timings["quantize_layers_s"] = time.perf_counter() - t
    _gpu_peak(device, timings, "layers")

    return _finish(opts, run_dir, model, tok, names, timings, t0, base_ppl, device, replace)


def _gpu_peak(device: str, into: dict[str, float] | None, phase: str = "") -> None:
    """Record this process's peak CUDA memory of the phase just ended and reset the counter.

    (Worker processes of multi-GPU runs are not counted.)
    """
    if device != "cuda":
        return
    import torch

    if into is not None:
        into[f"gpu_peak_{phase}_bytes"] = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes (0 where unknown).

    Linux: ``VmHWM`` of /proc/self/status, because ``ru_maxrss`` survives ``exec`` and
    would report the parent's peak for a freshly started CLI.
    """
    import sys

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _perplexity(model: Any, tok: Any, opts: RunOptions, device: str) -> dict[str, Any] | None:
    if not opts.eval_dataset or tok is None:
        return None
    try:
        from vptq_rs.evaluate import perplexity
    except ImportError:
        log.warning("vptq_rs.evaluate not available: skipping perplexity")
        return None
    try:
        model.to("cuda:0" if device == "cuda" else "cpu")
        return perplexity(
            model,
            tok,
            opts.eval_dataset,
            seqlen=opts.eval_seqlen,
            limit=opts.eval_limit,
            data_dir=opts.data_dir,
            progress=opts.progress,
        )
    except InvalidValueError as exc:  # no corpus on this machine: the run still succeeds
        log.warning("perplexity skipped: %s", exc)
        return None
    finally:
        model.to("cpu")


def _finish(
    opts: RunOptions,
    run_dir: Path,
    model: Any,
    tok: Any,
    names: list[str],
    timings: dict[str, float],
    t0: float,
    base_ppl: Any,
    device: str,
    replace: Path | None = None,
) -> Path:
    import torch

    from vptq_rs.quantize.bits import summarize_bits

    layers: dict[str, Any] = {}
    per_layer = []
    with torch.no_grad():
        for name in names:
            st_path, js_path = _layer_paths(run_dir, name)
            stats = json.loads(js_path.read_text())
            per_layer.append(stats)
            mod = model.get_submodule(name)
            w = load_layer_weight(st_path, torch.float32)
            mod.weight.copy_(w.to(mod.weight.dtype))
            if opts.quant.method == "vptq" or "config" in stats:
                with contextlib.suppress(CheckpointError):
                    layers[name] = load_layer_result(st_path)
    cfgs = [lay.config for lay in layers.values()]
    summary: dict[str, Any] = {
        "format": "vptq-rs-summary/1",
        "model": opts.model,
        "options": opts.to_json(),
        "layers": per_layer,
        "num_layers": len(names),
    }
    if cfgs and len(cfgs) == len(names):
        summary["bits"] = summarize_bits(cfgs, int8_codebooks=opts.quant.bitwidth == 8)
    elif opts.quant.method != "vptq":
        gs = opts.quant.groupsize
        summary["bits"] = {
            "bpw_estimate": opts.quant.wbits + (32 / gs if gs > 0 else 0.0),
            "note": "scalar groups are fake-quantized (no packed layer)",
        }
    for key in ("proxy_kmeans", "proxy_sweep", "proxy_residual", "proxy_final"):
        vals = [s[key] for s in per_layer if key in s]
        if vals:
            summary[f"mean_{key}"] = sum(vals) / len(vals)

    fault_point("pack_start")
    if opts.save_packed_model and len(layers) == len(names):
        t = time.perf_counter()
        try:
            from vptq_rs.checkpoint import save_packed
        except ImportError:
            log.warning("vptq_rs.checkpoint not available: packed_model/ not written")
            summary["packed_model"] = "skipped: vptq_rs.checkpoint not available"
        else:
            from vptq_rs.quantize.vptq import resolve_store_dtype

            first = next(iter(model.parameters()))
            src = Path(opts.model) if Path(opts.model).is_dir() else None
            save_packed(
                run_dir / "packed_model",
                model,
                layers,
                tokenizer=tok,
                dtype=resolve_store_dtype(opts.quant, first.dtype),
                source_dir=src,
                overwrite=True,  # a resumed run rewrites its own packed_model/
            )
            summary["packed_model"] = "packed_model"
            timings["pack_s"] = time.perf_counter() - t
    if opts.save_model:
        model.save_pretrained(run_dir / "model")
        if tok is not None:
            tok.save_pretrained(run_dir / "model")

    t = time.perf_counter()
    ppl = _perplexity(model, tok, opts, device)
    if ppl is not None or base_ppl is not None:
        timings["eval_s"] = time.perf_counter() - t
        res = {
            "dataset": opts.eval_dataset,
            "seqlen": opts.eval_seqlen,
            "limit": opts.eval_limit,
            "quantized": ppl,
            "base": base_ppl,
        }
        _atomic_write_text(run_dir / "ppl_results.json", json.dumps(res, indent=1))
        summary["ppl"] = res
    timings["total_s"] = time.perf_counter() - t0
    _gpu_peak(device, timings, "finish")
    summary["timings"] = {k: v for k, v in timings.items() if not k.startswith("gpu_peak")}
    summary["memory"] = {k: int(v) for k, v in timings.items() if k.startswith("gpu_peak")}
    summary["memory"]["peak_rss_bytes"] = _peak_rss()
    _atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    fault_point("before_rename")
    if run_dir.name.endswith(PARTIAL):
        final = run_dir.with_name(run_dir.name[: -len(PARTIAL)])
        old = None
        if replace is not None and final.exists():  # --overwrite: swap only now
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(run_dir, final)
        run_dir = final
        if old is not None:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
    log.info("run complete: %s", run_dir)
    return run_dir
