//! The portable tile and packing for [`packed`](super::packed): plain loops over fixed-size
//! arrays that the compiler vectorizes for whatever the target has (SSE2 on baseline x86-64,
//! NEON on aarch64). Keeps the packed driver, its fused epilogues and its thread-count
//! independence on every CPU; selected with `SPARC3_GEMM=portable` (candle's `gemm` crate is
//! the default where neither SIMD tile applies).

use super::packed::{pack_lanes, Isa, Mode, Tile, View};

const MR: usize = 4;
const NR: usize = 8;

pub struct Portable;

impl Isa for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    fn available() -> bool {
        true
    }
    unsafe fn pack_a(a: View, ic: usize, pc: usize, mc: usize, kc: usize, dst: *mut f32) {
        pack::<MR>(a.ptr.add(ic * a.rs + pc * a.cs), a.rs, a.cs, mc, kc, dst)
    }
    unsafe fn pack_b(b: View, pc: usize, jc: usize, kc: usize, nc: usize, dst: *mut f32) {
        pack::<NR>(b.ptr.add(pc * b.rs + jc * b.cs), b.cs, b.rs, nc, kc, dst)
    }
    unsafe fn kernel(kc: usize, pa: *const f32, pb: *const f32, out: Tile, mr: usize, nr: usize) {
        let mut acc = [[0f32; NR]; MR];
        for p in 0..kc {
            let a = &*(pa.add(p * MR) as *const [f32; MR]);
            let b = &*(pb.add(p * NR) as *const [f32; NR]);
            for (row, ai) in acc.iter_mut().zip(a) {
                for (c, bj) in row.iter_mut().zip(b) {
                    *c += ai * bj;
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(mr) {
            for (j, v) in row.iter().enumerate().take(nr) {
                let c = out.c.add(i * out.ldc + j);
                *c = match out.mode {
                    Mode::Write => *v,
                    Mode::Add => *c + v,
                    Mode::Fold { w, ldw, fold } => *c + fold.term(*w.add(i * ldw + j), *v),
                };
            }
        }
    }
}

/// Panels of `W` lanes, each `kc` steps of `W` values (`dst[panel][step][lane]`), zero-padded
/// past `lanes_total`; lane `l`, step `p` of the source at `base + l·ls + p·ss`.
unsafe fn pack<const W: usize>(
    base: *const f32,
    ls: usize,
    ss: usize,
    lanes_total: usize,
    kc: usize,
    dst: *mut f32,
) {
    for (pi, l0) in (0..lanes_total).step_by(W).enumerate() {
        let h = W.min(lanes_total - l0);
        let (first, panel) = (base.add(l0 * ls), dst.add(pi * W * kc));
        pack_lanes(first, ls, ss, (0, W, h), kc, panel, W);
    }
}
