//! Index bit-packing in the VPTQ checkpoint layout (FORMAT.md, "Index bit-packing").
//!
//! Each vector's code is `(res << index_bits) | main`, `total = index_bits + res_bits`
//! bits wide. A row of `n` codes is one LSB-first bit stream: bit `b` of code `j` is
//! stream bit `j * total + b`, and stream bit `32 * w + k` is bit `k` of word `w`. Rows are
//! padded to whole 32-bit words and never share a word.

use rayon::prelude::*;

use crate::error::{invalid, Result};

/// Largest main index width the format allows.
pub const MAX_INDEX_BITS: u32 = 16;
/// Largest residual index width the format allows.
pub const MAX_RES_BITS: u32 = 16;

/// An integer type that can hold an index.
pub trait Code: Copy + Send + Sync {
    /// The value as `u64`; negative values wrap to huge ones, so range checks reject them.
    fn wide(self) -> u64;
}

macro_rules! impl_code {
    ($($t:ty),*) => {$(impl Code for $t {
        #[inline(always)]
        fn wide(self) -> u64 { self as i64 as u64 }
    })*};
}
impl_code!(i8, i16, i32, i64, u8, u16, u32);
impl Code for u64 {
    #[inline(always)]
    fn wide(self) -> u64 {
        self
    }
}

/// Number of 32-bit words one packed row of `n` codes of `total_bits` bits occupies.
pub fn words_per_row(n: usize, total_bits: u32) -> usize {
    (n * total_bits as usize).div_ceil(32)
}

/// Check `index_bits` (1-16) and `res_bits` (0-16).
pub fn check_widths(index_bits: u32, res_bits: u32) -> Result<()> {
    if !(1..=MAX_INDEX_BITS).contains(&index_bits) {
        return Err(invalid!(
            "index_bits must be in 1..={MAX_INDEX_BITS}, got {index_bits}"
        ));
    }
    if res_bits > MAX_RES_BITS {
        return Err(invalid!(
            "res_bits must be in 0..={MAX_RES_BITS}, got {res_bits}"
        ));
    }
    Ok(())
}

/// Pack `rows x n` main indices (row-major) and optional residual indices into
/// `rows x words_per_row(n, index_bits + res_bits)` little-endian words.
///
/// Fails if a width is out of range, a slice length disagrees with `rows * n`, `res` is
/// given with `res_bits == 0` (or missing with `res_bits > 0`), or an index is negative or
/// does not fit its width. Rows are packed in parallel.
pub fn pack<M: Code, R: Code>(
    main: &[M],
    res: Option<&[R]>,
    rows: usize,
    n: usize,
    index_bits: u32,
    res_bits: u32,
) -> Result<Vec<u32>> {
    check_widths(index_bits, res_bits)?;
    let mut out = vec![0u32; rows * words_per_row(n, index_bits + res_bits)];
    pack_into(main, res, rows, n, index_bits, res_bits, &mut out)?;
    Ok(out)
}

/// [`pack`] into a caller-provided buffer of exactly `rows * words_per_row` words.
pub fn pack_into<M: Code, R: Code>(
    main: &[M],
    res: Option<&[R]>,
    rows: usize,
    n: usize,
    index_bits: u32,
    res_bits: u32,
    out: &mut [u32],
) -> Result<()> {
    check_widths(index_bits, res_bits)?;
    if main.len() != rows * n {
        return Err(invalid!(
            "main has {} elements, expected rows*n = {}",
            main.len(),
            rows * n
        ));
    }
    match (res, res_bits) {
        (Some(r), b) if b > 0 && r.len() != rows * n => {
            return Err(invalid!(
                "res has {} elements, expected {}",
                r.len(),
                rows * n
            ));
        }
        (Some(_), 0) => return Err(invalid!("res given but res_bits is 0")),
        (None, b) if b > 0 => return Err(invalid!("res_bits is {b} but no res indices given")),
        _ => {}
    }
    let total = index_bits + res_bits;
    let words = words_per_row(n, total);
    if out.len() != rows * words {
        return Err(invalid!(
            "output holds {} words, expected {}",
            out.len(),
            rows * words
        ));
    }
    if rows == 0 || words == 0 {
        return Ok(());
    }
    let bad_rows: Vec<usize> = out
        .par_chunks_mut(words)
        .enumerate()
        .filter_map(|(row, dst)| {
            let m = &main[row * n..(row + 1) * n];
            let ok = match res {
                Some(r) => pack_row(
                    m,
                    Some(&r[row * n..(row + 1) * n]),
                    index_bits,
                    res_bits,
                    dst,
                ),
                None => pack_row::<M, R>(m, None, index_bits, res_bits, dst),
            };
            (!ok).then_some(row)
        })
        .collect();
    match bad_rows.first() {
        None => Ok(()),
        Some(&row) => Err(first_out_of_range(main, res, row, n, index_bits, res_bits)),
    }
}

/// Pack one row; returns false if some index is out of range (the row is then garbage).
#[inline(always)]
fn pack_row<M: Code, R: Code>(
    m: &[M],
    r: Option<&[R]>,
    index_bits: u32,
    res_bits: u32,
    dst: &mut [u32],
) -> bool {
    let total = index_bits + res_bits;
    let n = m.len();
    // OR of every index shifted down by its width: nonzero iff one does not fit
    let mut overflow = 0u64;
    let mut codes = [0u64; BLOCK];
    let full = n / BLOCK;
    for b in 0..full {
        let ms = &m[b * BLOCK..(b + 1) * BLOCK];
        match r {
            Some(r) => {
                let rs = &r[b * BLOCK..(b + 1) * BLOCK];
                for j in 0..BLOCK {
                    let (mi, ri) = (ms[j].wide(), rs[j].wide());
                    overflow |= (mi >> index_bits) | (ri >> res_bits);
                    codes[j] = (ri << index_bits) | mi;
                }
            }
            None => {
                for j in 0..BLOCK {
                    let mi = ms[j].wide();
                    overflow |= mi >> index_bits;
                    codes[j] = mi;
                }
            }
        }
        // a block of 32 codes of `total` bits fills exactly `total` words
        let out = &mut dst[b * total as usize..(b + 1) * total as usize];
        with_total!(total, T => pack_block::<T>(&codes, out));
    }
    // the tail: a plain bit stream continuing where the blocks stopped
    let mut acc: u64 = 0;
    let mut nbits: u32 = 0;
    let mut w = full * total as usize;
    for j in full * BLOCK..n {
        let mi = m[j].wide();
        let code = match r {
            Some(r) => {
                let ri = r[j].wide();
                overflow |= (mi >> index_bits) | (ri >> res_bits);
                (ri << index_bits) | mi
            }
            None => {
                overflow |= mi >> index_bits;
                mi
            }
        };
        // nbits < 32 before the add and total <= 32, so acc never overflows 64 bits
        acc |= (code & ((1u64 << total) - 1)) << nbits;
        nbits += total;
        if nbits >= 32 {
            dst[w] = acc as u32;
            w += 1;
            acc >>= 32;
            nbits -= 32;
        }
    }
    if nbits > 0 {
        dst[w] = acc as u32;
    }
    overflow == 0
}

/// Codes per block of the fast paths: 32 codes of T bits are exactly T words.
const BLOCK: usize = 32;

/// Call `$body` with `$t` bound to `total` as a compile-time constant (1..=32).
macro_rules! with_total {
    ($total:expr, $t:ident => $body:expr) => {
        match $total {
            1 => {
                const $t: u32 = 1;
                $body
            }
            2 => {
                const $t: u32 = 2;
                $body
            }
            3 => {
                const $t: u32 = 3;
                $body
            }
            4 => {
                const $t: u32 = 4;
                $body
            }
            5 => {
                const $t: u32 = 5;
                $body
            }
            6 => {
                const $t: u32 = 6;
                $body
            }
            7 => {
                const $t: u32 = 7;
                $body
            }
            8 => {
                const $t: u32 = 8;
                $body
            }
            9 => {
                const $t: u32 = 9;
                $body
            }
            10 => {
                const $t: u32 = 10;
                $body
            }
            11 => {
                const $t: u32 = 11;
                $body
            }
            12 => {
                const $t: u32 = 12;
                $body
            }
            13 => {
                const $t: u32 = 13;
                $body
            }
            14 => {
                const $t: u32 = 14;
                $body
            }
            15 => {
                const $t: u32 = 15;
                $body
            }
            16 => {
                const $t: u32 = 16;
                $body
            }
            17 => {
                const $t: u32 = 17;
                $body
            }
            18 => {
                const $t: u32 = 18;
                $body
            }
            19 => {
                const $t: u32 = 19;
                $body
            }
            20 => {
                const $t: u32 = 20;
                $body
            }
            21 => {
                const $t: u32 = 21;
                $body
            }
            22 => {
                const $t: u32 = 22;
                $body
            }
            23 => {
                const $t: u32 = 23;
                $body
            }
            24 => {
                const $t: u32 = 24;
                $body
            }
            25 => {
                const $t: u32 = 25;
                $body
            }
            26 => {
                const $t: u32 = 26;
                $body
            }
            27 => {
                const $t: u32 = 27;
                $body
            }
            28 => {
                const $t: u32 = 28;
                $body
            }
            29 => {
                const $t: u32 = 29;
                $body
            }
            30 => {
                const $t: u32 = 30;
                $body
            }
            31 => {
                const $t: u32 = 31;
                $body
            }
            _ => {
                const $t: u32 = 32;
                $body
            }
        }
    };
}
use with_total;

/// 32 codes of `T` bits (already checked) into `T` words; shifts are constants per `T`.
#[inline(always)]
fn pack_block<const T: u32>(codes: &[u64; BLOCK], out: &mut [u32]) {
    let out: &mut [u32] = &mut out[..T as usize];
    out.fill(0);
    for (j, &code) in codes.iter().enumerate() {
        let off = j as u32 * T;
        let (w, shift) = ((off / 32) as usize, off % 32);
        out[w] |= (code << shift) as u32;
        if shift + T > 32 {
            out[w + 1] |= (code >> (32 - shift)) as u32;
        }
    }
}

/// `T` words into 32 codes of `T` bits.
#[inline(always)]
fn unpack_block<const T: u32>(src: &[u32], codes: &mut [u64; BLOCK]) {
    let src: &[u32] = &src[..T as usize];
    let mask = if T == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << T) - 1
    };
    for (j, code) in codes.iter_mut().enumerate() {
        let off = j as u32 * T;
        let (w, shift) = ((off / 32) as usize, off % 32);
        let mut v = u64::from(src[w]) >> shift;
        if shift + T > 32 {
            v |= u64::from(src[w + 1]) << (32 - shift);
        }
        *code = v & mask;
    }
}

fn first_out_of_range<M: Code, R: Code>(
    main: &[M],
    res: Option<&[R]>,
    row: usize,
    n: usize,
    index_bits: u32,
    res_bits: u32,
) -> crate::error::CoreError {
    for j in 0..n {
        let v = main[row * n + j].wide();
        if v >> index_bits != 0 {
            return invalid!(
                "main index {} at row {row}, position {j} does not fit in {index_bits} bits",
                v as i64
            );
        }
        if let Some(r) = res {
            let v = r[row * n + j].wide();
            if v >> res_bits != 0 {
                return invalid!(
                    "res index {} at row {row}, position {j} does not fit in {res_bits} bits",
                    v as i64
                );
            }
        }
    }
    invalid!("an index at row {row} does not fit its width")
}

/// Check that `packed_len` words are `rows` packed rows of `words` words, each holding
/// exactly `n` codes of `index_bits + res_bits` bits. Overflow-safe: every size may come
/// from an untrusted file or caller, so check this before allocating `rows * n` outputs.
pub fn check_packed_shape(
    packed_len: usize,
    rows: usize,
    words: usize,
    n: usize,
    index_bits: u32,
    res_bits: u32,
) -> Result<()> {
    check_widths(index_bits, res_bits)?;
    let total = index_bits + res_bits;
    match n.checked_mul(total as usize).map(|b| b.div_ceil(32)) {
        Some(need) if need == words => {}
        need => {
            let need = need.map_or_else(|| "more than memory holds".to_string(), |w| w.to_string());
            return Err(invalid!(
                "packed rows have {words} words, but {n} codes of {total} bits need {need}"
            ));
        }
    }
    if rows.checked_mul(words) != Some(packed_len) {
        return Err(invalid!(
            "packed has {packed_len} words, expected rows * words = {rows} * {words}"
        ));
    }
    Ok(())
}

/// Unpack `rows x words` packed words into `rows x n` main indices and, when
/// `res_bits > 0`, `rows x n` residual indices (both row-major, as `i32`).
///
/// Fails if a width is out of range or `words` is not `words_per_row(n, total)`.
pub fn unpack(
    packed: &[u32],
    rows: usize,
    words: usize,
    n: usize,
    index_bits: u32,
    res_bits: u32,
) -> Result<(Vec<i32>, Option<Vec<i32>>)> {
    // sizes first: `rows * n` must not be allocated (or overflow) for inconsistent input
    check_packed_shape(packed.len(), rows, words, n, index_bits, res_bits)?;
    let mut main = vec![0i32; rows * n];
    let mut res = (res_bits > 0).then(|| vec![0i32; rows * n]);
    unpack_into(
        packed,
        rows,
        words,
        n,
        index_bits,
        res_bits,
        &mut main,
        res.as_deref_mut(),
    )?;
    Ok((main, res))
}

/// [`unpack`] into caller-provided `rows * n` buffers (`res` required iff `res_bits > 0`).
#[allow(clippy::too_many_arguments)]
pub fn unpack_into(
    packed: &[u32],
    rows: usize,
    words: usize,
    n: usize,
    index_bits: u32,
    res_bits: u32,
    main: &mut [i32],
    res: Option<&mut [i32]>,
) -> Result<()> {
    check_packed_shape(packed.len(), rows, words, n, index_bits, res_bits)?;
    let total = index_bits + res_bits;
    if main.len() != rows * n || res.as_ref().is_some_and(|r| r.len() != rows * n) {
        return Err(invalid!(
            "output buffers must hold rows * n = {} indices",
            rows * n
        ));
    }
    if (res_bits > 0) != res.is_some() {
        return Err(invalid!("a res buffer is needed exactly when res_bits > 0"));
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let code_mask = if total == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << total) - 1
    };
    let main_mask = (1u64 << index_bits) - 1;
    let decode_row = |src: &[u32], m: &mut [i32], mut r: Option<&mut [i32]>| {
        let full = n / BLOCK;
        let mut codes = [0u64; BLOCK];
        for b in 0..full {
            let words_in = &src[b * total as usize..];
            with_total!(total, T => unpack_block::<T>(words_in, &mut codes));
            let ms = &mut m[b * BLOCK..(b + 1) * BLOCK];
            for j in 0..BLOCK {
                ms[j] = (codes[j] & main_mask) as i32;
            }
            if let Some(r) = r.as_deref_mut() {
                let rs = &mut r[b * BLOCK..(b + 1) * BLOCK];
                for j in 0..BLOCK {
                    rs[j] = (codes[j] >> index_bits) as i32;
                }
            }
        }
        let mut acc: u64 = 0;
        let mut nbits: u32 = 0;
        let mut w = full * total as usize;
        for j in full * BLOCK..n {
            if nbits < total {
                acc |= u64::from(src[w]) << nbits;
                w += 1;
                nbits += 32;
            }
            let code = acc & code_mask;
            acc >>= total;
            nbits -= total;
            m[j] = (code & main_mask) as i32;
            if let Some(r) = r.as_deref_mut() {
                r[j] = (code >> index_bits) as i32;
            }
        }
    };
    match res {
        Some(r) => main
            .par_chunks_mut(n)
            .zip(r.par_chunks_mut(n))
            .zip(packed.par_chunks(words))
            .for_each(|((m, r), src)| decode_row(src, m, Some(r))),
        None => main
            .par_chunks_mut(n)
            .zip(packed.par_chunks(words))
            .for_each(|(m, src)| decode_row(src, m, None)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent, bit-at-a-time reader of the documented layout.
    fn read_code(words: &[u32], j: usize, total: u32) -> u64 {
        (0..total as usize)
            .map(|b| {
                let bit = j * total as usize + b;
                u64::from((words[bit / 32] >> (bit % 32)) & 1) << b
            })
            .sum()
    }

    #[test]
    fn known_layout_3_bits() {
        // codes 0..8 at 3 bits: stream = 000 100 010 110 001 101 011 111 (LSB first)
        let codes: Vec<i64> = (0..8).collect();
        let p = pack::<i64, i64>(&codes, None, 1, 8, 3, 0).unwrap();
        assert_eq!(p.len(), 1);
        let mut expect = 0u32;
        for (j, c) in codes.iter().enumerate() {
            expect |= (*c as u32) << (3 * j);
        }
        assert_eq!(p[0], expect);
    }

    #[test]
    fn rows_do_not_share_words() {
        let codes = vec![1u16; 2 * 3];
        let p = pack::<u16, u16>(&codes, None, 2, 3, 5, 0).unwrap();
        assert_eq!(p, vec![1 | 1 << 5 | 1 << 10, 1 | 1 << 5 | 1 << 10]);
    }

    #[test]
    fn full_32_bit_codes() {
        let main = [0xFFFFu32, 0x1234];
        let res = [0xFFFFu32, 0xABCD];
        let p = pack(&main, Some(&res[..]), 1, 2, 16, 16).unwrap();
        assert_eq!(p, vec![0xFFFF_FFFF, 0xABCD_1234]);
        let (m, r) = unpack(&p, 1, 2, 2, 16, 16).unwrap();
        assert_eq!(m, vec![0xFFFF, 0x1234]);
        assert_eq!(r.unwrap(), vec![0xFFFF, 0xABCD]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(pack::<i32, i32>(&[8], None, 1, 1, 3, 0).is_err());
        assert!(pack::<i32, i32>(&[-1], None, 1, 1, 3, 0).is_err());
        assert!(pack::<i32, i32>(&[0], None, 1, 1, 0, 0).is_err());
        assert!(pack::<i32, i32>(&[0], None, 1, 1, 17, 0).is_err());
        assert!(pack::<i32, i32>(&[0], None, 1, 1, 4, 2).is_err());
        assert!(pack::<i32, i32>(&[0], Some(&[0]), 1, 1, 4, 0).is_err());
        assert!(pack::<i32, i32>(&[0, 1], None, 1, 1, 4, 0).is_err());
        assert!(unpack(&[0, 0], 1, 2, 8, 4, 0).is_err());
    }

    /// Found by fuzz/unpack: sizes whose products overflow are errors, never a panic or a
    /// huge allocation.
    #[test]
    fn rejects_overflowing_sizes() {
        assert!(unpack(&[], 2, 0, 1 << 62, 16, 16).is_err());
        assert!(unpack(&[], usize::MAX, 0, usize::MAX, 1, 0).is_err());
        assert!(unpack(&[0; 4], 2, usize::MAX / 2 + 3, 1, 8, 0).is_err());
        assert!(check_packed_shape(0, 1, 0, usize::MAX / 3, 16, 16).is_err());
    }

    proptest! {
        #[test]
        fn pack_unpack_identity(
            index_bits in 1u32..=16, res_bits in 0u32..=16,
            rows in 0usize..5, n in 0usize..70, seed in any::<u64>(),
        ) {
            let mut s = seed | 1;
            let mut next = |lim: u64| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s % lim };
            let main: Vec<u32> = (0..rows * n).map(|_| next(1 << index_bits) as u32).collect();
            let res: Vec<u32> = (0..rows * n).map(|_| next(1 << res_bits) as u32).collect();
            let r = (res_bits > 0).then_some(&res[..]);
            let total = index_bits + res_bits;
            let words = words_per_row(n, total);
            let p = pack(&main, r, rows, n, index_bits, res_bits).unwrap();
            prop_assert_eq!(p.len(), rows * words);
            for row in 0..rows {
                for j in 0..n {
                    let code = read_code(&p[row * words..(row + 1) * words], j, total);
                    let res_part = (u64::from(res[row * n + j]) << index_bits) * u64::from(res_bits > 0);
                    let want = res_part | u64::from(main[row * n + j]);
                    prop_assert_eq!(code, want);
                }
            }
            let (m, rr) = unpack(&p, rows, words, n, index_bits, res_bits).unwrap();
            prop_assert_eq!(m, main.iter().map(|&x| x as i32).collect::<Vec<_>>());
            if res_bits > 0 {
                prop_assert_eq!(rr.unwrap(), res.iter().map(|&x| x as i32).collect::<Vec<_>>());
            } else {
                prop_assert!(rr.is_none());
            }
        }
    }
}
