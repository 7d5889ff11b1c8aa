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

/// An integer type that can hold an index; negative values are rejected when packing.
pub trait Code: Copy + Send + Sync {
    /// The value as `u64`, or `None` when negative.
    fn to_u64(self) -> Option<u64>;
}

macro_rules! impl_code_signed {
    ($($t:ty),*) => {$(impl Code for $t {
        #[inline(always)]
        fn to_u64(self) -> Option<u64> { u64::try_from(self).ok() }
    })*};
}
macro_rules! impl_code_unsigned {
    ($($t:ty),*) => {$(impl Code for $t {
        #[inline(always)]
        fn to_u64(self) -> Option<u64> { Some(self as u64) }
    })*};
}
impl_code_signed!(i8, i16, i32, i64);
impl_code_unsigned!(u8, u16, u32, u64);

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
    let mut out = vec![0u32; rows * words];
    if rows == 0 || words == 0 {
        return Ok(out);
    }
    let main_lim = 1u64 << index_bits;
    let res_lim = 1u64 << res_bits;
    out.par_chunks_mut(words)
        .enumerate()
        .try_for_each(|(row, dst)| -> Result<()> {
            let m = &main[row * n..(row + 1) * n];
            let mut acc: u64 = 0;
            let mut nbits: u32 = 0;
            let mut w = 0usize;
            for j in 0..n {
                let mi = m[j].to_u64().filter(|&x| x < main_lim).ok_or_else(|| {
                    invalid!(
                        "main index at row {row}, position {j} does not fit in {index_bits} bits"
                    )
                })?;
                let code = match res {
                    Some(r) => {
                        let ri = r[row * n + j]
                            .to_u64()
                            .filter(|&x| x < res_lim)
                            .ok_or_else(|| {
                                invalid!(
                            "res index at row {row}, position {j} does not fit in {res_bits} bits"
                        )
                            })?;
                        (ri << index_bits) | mi
                    }
                    None => mi,
                };
                // nbits < 32 before the add and total <= 32, so acc never overflows 64 bits
                acc |= code << nbits;
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
            Ok(())
        })?;
    Ok(out)
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
    check_widths(index_bits, res_bits)?;
    let total = index_bits + res_bits;
    let need = words_per_row(n, total);
    if words != need {
        return Err(invalid!(
            "packed rows have {words} words, but {n} codes of {total} bits need {need}"
        ));
    }
    if packed.len() != rows * words {
        return Err(invalid!(
            "packed has {} words, expected {}",
            packed.len(),
            rows * words
        ));
    }
    let mut main = vec![0i32; rows * n];
    let mut res = (res_bits > 0).then(|| vec![0i32; rows * n]);
    if rows == 0 || n == 0 {
        return Ok((main, res));
    }
    let code_mask = if total == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << total) - 1
    };
    let main_mask = (1u64 << index_bits) - 1;
    let decode_row = |src: &[u32], m: &mut [i32], mut r: Option<&mut [i32]>| {
        let mut acc: u64 = 0;
        let mut nbits: u32 = 0;
        let mut w = 0usize;
        for j in 0..n {
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
    match res.as_mut() {
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
    Ok((main, res))
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
