"""Pack/unpack throughput of the Rust core vs a vectorised numpy version of the same layout.

Shape: 1,792 rows x 4,096 codes (a 14336x4096 Linear at v = 8), widths 2, 3, 12, 16 and
16+8 (main + residual). Both sides produce the same words (checked before timing).
Writes results/bitpack.json.
"""

from __future__ import annotations

import argparse
from math import gcd

import numpy as np

import vptq_rs
from _meta import median, timeit, write

ROWS, N = 1792, 4096


def _blocks(n: int, total: int) -> tuple[int, int, int]:
    """Codes per block B and words per block W with B * total = 32 * W; padded code count."""
    b = 32 // gcd(total, 32)
    return b, b * total // 32, -(-n // b) * b


def numpy_pack(main: np.ndarray, index_bits: int, res: np.ndarray | None, res_bits: int):
    """FORMAT.md packing with numpy: codes grouped into blocks that end on a word boundary,
    then one shift-and-or per position in the block, vectorised over all blocks and rows."""
    total = index_bits + res_bits
    rows, n = main.shape
    b, w, npad = _blocks(n, total)
    code = np.zeros((rows, npad), dtype=np.uint64)
    code[:, :n] = main
    if res is not None:
        code[:, :n] |= res.astype(np.uint64) << np.uint64(index_bits)
    code = code.reshape(rows, npad // b, b)
    out = np.zeros((rows, npad // b, w + 1), dtype=np.uint64)
    for j in range(b):
        word, shift = divmod(j * total, 32)
        v = code[:, :, j] << np.uint64(shift)
        out[:, :, word] |= v & np.uint64(0xFFFFFFFF)
        out[:, :, word + 1] |= v >> np.uint64(32)
    words = -(-n * total // 32)
    packed = out[:, :, :w].reshape(rows, -1)[:, :words]
    return packed.astype(np.uint32).view(np.int32)


def numpy_unpack(packed: np.ndarray, index_bits: int, n: int, res_bits: int):
    total = index_bits + res_bits
    rows, words = packed.shape
    b, w, npad = _blocks(n, total)
    full = np.zeros((rows, npad // b * w + 1), dtype=np.uint64)
    full[:, :words] = packed.view(np.uint32)
    blocks = full[:, : npad // b * w].reshape(rows, npad // b, w)
    nxt = np.concatenate([blocks[:, :, 1:], np.zeros_like(blocks[:, :, :1])], axis=2)
    mask = np.uint64((1 << total) - 1)
    code = np.empty((rows, npad // b, b), dtype=np.uint64)
    for j in range(b):
        word, shift = divmod(j * total, 32)
        v = (blocks[:, :, word] >> np.uint64(shift)) | (nxt[:, :, word] << np.uint64(32 - shift))
        code[:, :, j] = v & mask
    code = code.reshape(rows, npad)[:, :n]
    main = (code & np.uint64((1 << index_bits) - 1)).astype(np.int32)
    res = (code >> np.uint64(index_bits)).astype(np.int32) if res_bits else None
    return main, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for index_bits, res_bits in [(2, 0), (3, 0), (12, 0), (16, 0), (16, 8)]:
        main_idx = rng.integers(0, 2**index_bits, size=(ROWS, N)).astype(np.int32)
        res = rng.integers(0, 2**res_bits, size=(ROWS, N)).astype(np.int32) if res_bits else None
        ours = vptq_rs.pack_indices(main_idx, index_bits, res, res_bits)
        ref = numpy_pack(main_idx, index_bits, res, res_bits)
        assert np.array_equal(ours, ref), "numpy and Rust layouts differ"
        assert np.array_equal(numpy_unpack(ours, index_bits, N, res_bits)[0], main_idx)

        def rust_pack(m=main_idx, ib=index_bits, r=res, rb=res_bits):
            return vptq_rs.pack_indices(m, ib, r, rb)

        def np_pack(m=main_idx, ib=index_bits, r=res, rb=res_bits):
            return numpy_pack(m, ib, r, rb)

        def rust_unpack(p=ours, ib=index_bits, rb=res_bits):
            return vptq_rs.unpack_indices(p, ib, N, rb)

        def np_unpack(p=ours, ib=index_bits, rb=res_bits):
            return numpy_unpack(p, ib, N, rb)

        t = {
            "rust_pack": timeit(rust_pack, args.repeat),
            "numpy_pack": timeit(np_pack, args.repeat),
            "rust_unpack": timeit(rust_unpack, args.repeat),
            "numpy_unpack": timeit(np_unpack, args.repeat),
        }
        med = {k: median(v) for k, v in t.items()}
        codes = ROWS * N
        row = {
            "index_bits": index_bits,
            "res_bits": res_bits,
            "codes": codes,
            "seconds": t,
            "median_s": med,
            "pack_mcodes_per_s": codes / med["rust_pack"] / 1e6,
            "unpack_mcodes_per_s": codes / med["rust_unpack"] / 1e6,
            "pack_speedup_vs_numpy": med["numpy_pack"] / med["rust_pack"],
            "unpack_speedup_vs_numpy": med["numpy_unpack"] / med["rust_unpack"],
        }
        rows.append(row)
        print(
            f"{index_bits:>2}+{res_bits:<2} bits: pack {row['pack_speedup_vs_numpy']:6.1f}x numpy "
            f"({row['pack_mcodes_per_s']:.0f} Mcodes/s), unpack "
            f"{row['unpack_speedup_vs_numpy']:6.1f}x ({row['unpack_mcodes_per_s']:.0f} Mcodes/s)"
        )
    path = write("bitpack", {"rows": ROWS, "n": N, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
