//! The path for any CPU: plain loops, the same order of operations as the SIMD paths
//! (per output element, one chain over the block's inputs in ascending order, then added to
//! `C`), with separate multiply and add (no FMA is assumed).

use half::bf16;

use super::{Tile, TileA, TileB, NR};

pub const MR: usize = 4;

pub(crate) fn tile(t: &Tile<'_>) {
    let TileA::F32(a) = t.a else {
        unreachable!("the portable path packs A as f32");
    };
    let rows = t.rows;
    let mut acc = [[0f32; NR]; MR];
    match t.b {
        TileB::F32(b) => {
            for (i, brow) in b.chunks_exact(NR).enumerate() {
                for r in 0..rows {
                    let av = a[i * rows + r];
                    for j in 0..NR {
                        acc[r][j] += av * brow[j];
                    }
                }
            }
        }
        TileB::Bf16(b) => {
            for (p, bpair) in b.chunks_exact(2 * NR).enumerate() {
                for half in 0..2 {
                    let i = 2 * p + half;
                    for r in 0..rows {
                        let av = a[i * rows + r];
                        for j in 0..NR {
                            acc[r][j] += av * bf16::from_bits(bpair[2 * j + half]).to_f32();
                        }
                    }
                }
            }
        }
    }
    store(t, &acc[..rows]);
}

/// Writes (or adds) the valid part of a tile's accumulators.
pub(crate) fn store(t: &Tile<'_>, acc: &[[f32; NR]]) {
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: `Tile::c` points at `rows` rows of at least `cols` writable columns,
        // `ldc` apart (`run_panel`), and no other task writes these columns.
        let out = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), t.cols) };
        if t.accumulate {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        } else {
            out.copy_from_slice(&row[..t.cols]);
        }
    }
}
