//! `bitpack::unpack` with arbitrary widths, sizes and words; what unpacks must repack to the
//! same codes (and the used bits of the words).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vptq_core::bitpack::{pack, unpack, words_per_row};

#[derive(Arbitrary, Debug)]
struct Input {
    rows: u8,
    /// Codes per row; the high bits reach sizes whose bit counts overflow.
    n: u64,
    index_bits: u8,
    res_bits: u8,
    /// Use this word count instead of the right one (when `Some`).
    words: Option<u64>,
    data: Vec<u32>,
}

fuzz_target!(|inp: Input| {
    let rows = inp.rows as usize;
    let n = if inp.n >> 63 == 1 {
        inp.n as usize
    } else {
        (inp.n % 4096) as usize
    };
    let (ib, rb) = (u32::from(inp.index_bits % 40), u32::from(inp.res_bits % 40));
    let good = (1..=16).contains(&ib) && rb <= 16;
    let words = match inp.words {
        Some(w) => w as usize,
        None if good && n < 4096 => words_per_row(n, ib + rb),
        None => 0,
    };
    let Ok((main, res)) = unpack(&inp.data, rows, words, n, ib, rb) else {
        return;
    };
    assert_eq!(main.len(), rows * n);
    assert_eq!(res.as_ref().map_or(rows * n, Vec::len), rows * n);
    let repacked = pack(&main, res.as_deref(), rows, n, ib, rb).expect("unpacked codes repack");
    assert_eq!(repacked.len(), inp.data.len());
    // every bit a code uses comes back; padding bits are zero after repacking
    let used = n * (ib + rb) as usize;
    for r in 0..rows {
        for w in 0..words {
            let lo = 32 * w;
            let mask = if used >= lo + 32 {
                u32::MAX
            } else if used > lo {
                (1u32 << (used - lo)) - 1
            } else {
                0
            };
            assert_eq!(repacked[r * words + w], inp.data[r * words + w] & mask);
        }
    }
});
