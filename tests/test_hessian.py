"""Hessians: fp64 accumulation, FORMAT.md files (ours and QuIP#-style), inversion, collection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vptq_rs.errors import CheckpointError  # noqa: E402
from vptq_rs.hessian import (  # noqa: E402
    HessianAccumulator,
    collect_hessians,
    hessian_file,
    invert_hessian,
    load_hessian,
    load_inverse_hessian,
    save_hessian,
)
from vptq_rs.quantize.options import QuantOptions  # noqa: E402
from vptq_rs.quantize.vptq import quantize_layer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_models import tiny_config  # noqa: E402


def test_accumulator_file_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 40, 12, generator=g) + 0.5
    acc = HessianAccumulator(12)
    for chunk in x:
        acc.add(chunk)
    flat = x.reshape(-1, 12).double()
    want = flat.t() @ flat / flat.shape[0]
    save_hessian(tmp_path / "0_qkv.pt", acc.file_dict())
    data = torch.load(tmp_path / "0_qkv.pt", weights_only=True)
    assert set(data) == {"flatH", "mu", "n", "ct"} and data["n"] == 12 and data["ct"] == 200
    assert data["flatH"].dtype == torch.float32 and data["flatH"].numel() == 12 * 13 // 2
    h, mu, ct = load_hessian(tmp_path / "0_qkv.pt")
    assert ct == 200
    torch.testing.assert_close(mu, flat.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h.t())


def test_reads_quip_style_file(tmp_path: Path) -> None:
    """A file laid out as QuIP#/VPTQ-community write it: centered tril, mu, n, ct tensors."""
    n = 9
    a = torch.randn(n, n, dtype=torch.float64)
    centered = a @ a.t()
    mu = torch.randn(n, dtype=torch.float64)
    idx = torch.tril_indices(n, n)
    torch.save(
        {
            "flatH": centered[idx[0], idx[1]].float(),
            "mu": mu.float(),
            "n": n,
            "ct": torch.tensor(4096),
        },
        tmp_path / "3_down.pt",
    )
    h, mu2, ct = load_hessian(hessian_file(tmp_path, 3, "down"))
    assert ct == 4096
    torch.testing.assert_close(h, centered + torch.outer(mu, mu), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mu2, mu, rtol=1e-6, atol=1e-6)


def test_bad_files_raise_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not readable"):
        load_hessian(tmp_path / "bad.pt")
    torch.save({"mu": torch.zeros(3)}, tmp_path / "nomat.pt")
    with pytest.raises(CheckpointError, match="flatH"):
        load_hessian(tmp_path / "nomat.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_hessian(tmp_path / "missing.pt")


def test_invert_is_damped_permuted_inverse_cholesky() -> None:
    a = torch.randn(16, 16, dtype=torch.float64)
    h = a @ a.t() + torch.eye(16, dtype=torch.float64)
    inv = invert_hessian(h, percdamp=0.1, act_order=True)
    diag = torch.diagonal(h)
    assert torch.equal(inv.perm, torch.sort(diag, descending=True, stable=True).indices)
    hn = h / diag.mean()
    hp = hn[inv.perm][:, inv.perm] + 0.1 * torch.eye(16, dtype=torch.float64)
    u = inv.chol.double()
    torch.testing.assert_close(u.t() @ u, torch.linalg.inv(hp), rtol=1e-4, atol=1e-5)
    assert torch.equal(u, torch.triu(u))


def test_inverse_file_is_used(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=g)
    h = (x.t() @ x).double()
    w = torch.randn(40, 32, generator=g)
    inv = invert_hessian(h, 0.01, act_order=True)
    torch.save({"invH": inv.chol, "perm": inv.perm, "zero_idx": inv.zero_idx}, tmp_path / "0_o.pt")
    loaded = load_inverse_hessian(tmp_path / "0_o.pt")
    opts = QuantOptions(vector_lens=(-1, 4), num_centroids=(-1, 16), enable_perm=True, kiter=10)
    a = quantize_layer(w, h, opts, inv=loaded).layer
    b = quantize_layer(w, h, opts).layer
    assert torch.equal(a.main_idx, b.main_idx) and torch.equal(a.perm, b.perm)
    opts_noperm = QuantOptions(vector_lens=(-1, 4), num_centroids=(-1, 16))
    with pytest.raises(ValueError, match="enable_perm"):
        quantize_layer(w, h, opts_noperm, inv=loaded)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_collect_matches_direct_hooks(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    windows = [torch.randint(3, 128, (24,)).tolist() for _ in range(3)]
    # reference: hooks on the full model
    seen: dict[str, list[torch.Tensor]] = {}
    names = {
        "model.layers.1.mlp.down_proj": "1_down",
        (
            "model.layers.0.self_attn.q_proj"
            if arch == "llama"
            else "model.layers.0.self_attn.qkv_proj"
        ): "0_qkv",
    }
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, k=k: seen.setdefault(k, []).append(a[0].reshape(-1, a[0].shape[-1]))
        )
        for n, k in names.items()
    ]
    with torch.no_grad():
        for w in windows:
            model(torch.tensor([w]))
    for hk in hooks:
        hk.remove()
    written = collect_hessians(model, windows, tmp_path, progress=False)
    assert len(written) == 8
    for key in names.values():
        x = torch.cat(seen[key]).double()
        h, _, ct = load_hessian(tmp_path / f"{key}.pt")
        assert ct == 72
        torch.testing.assert_close(h, x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-5)


def test_hessian_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_models import calib_file, make_tiny_model

    from vptq_rs.cli import main

    model = make_tiny_model(tmp_path, "qwen2")
    calib = calib_file(tmp_path)
    out = tmp_path / "h"
    main(
        [
            "hessian",
            str(model),
            "--calib",
            str(calib),
            "--nsamples",
            "2",
            "--seq-len",
            "32",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(
        f"{i}_{k}.pt" for i in range(2) for k in ("qkv", "o", "up", "down")
    )
    assert load_hessian(out / "0_down.pt")[0].shape == (128, 128)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["hessian", str(model), "--calib", str(calib), "--nsamples", "0", "--out", str(out)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --nsamples")


def test_torch_kmeans_fallback_is_deterministic() -> None:
    from vptq_rs.quantize.kmeans_dispatch import kmeans

    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    w = torch.rand(500, generator=torch.Generator().manual_seed(1))
    a = kmeans(x, 16, w, iters=10, seed=3, backend="torch")
    b = kmeans(x, 16, w, iters=10, seed=3, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    rust = kmeans(x, 16, w, iters=10, seed=3, backend="rust")
    obj = lambda c, lab: float((w * ((x - c[lab]) ** 2).sum(1)).sum())  # noqa: E731
    assert obj(*a) < 1.5 * obj(*rust) and obj(*rust) < 1.5 * obj(*a)
