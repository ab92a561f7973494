//! The AVX-512F tile and packing for [`packed`](super::packed): 8×32 (16 zmm accumulators);
//! transposed operands (the linear layers' Wᵀ, row-major A) packed through 16×16 register
//! transposes. Neither the `gemm` crate (AVX-512 only behind its nightly feature) nor Debian's
//! OpenBLAS 0.3.21 (which takes recent AMD cores for Haswell) uses 512-bit registers, and
//! PyTorch's MKL does not on AMD: on such a core this does twice the work per instruction.

use super::packed::{pack_lanes, Fold, Isa, Mode, Tile, View};
use std::arch::x86_64::*;

const MR: usize = 8;
const NR: usize = 32;

pub struct Avx512;

impl Isa for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }
    unsafe fn pack_a(a: View, ic: usize, pc: usize, mc: usize, kc: usize, dst: *mut f32) {
        pack::<MR>(a.ptr.add(ic * a.rs + pc * a.cs), a.rs, a.cs, mc, kc, dst)
    }
    unsafe fn pack_b(b: View, pc: usize, jc: usize, kc: usize, nc: usize, dst: *mut f32) {
        pack::<NR>(b.ptr.add(pc * b.rs + jc * b.cs), b.cs, b.rs, nc, kc, dst)
    }
    /// The 8×32 tile: 16 zmm accumulators, B rows loaded, A elements broadcast.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(kc: usize, pa: *const f32, pb: *const f32, out: Tile, mr: usize, nr: usize) {
        if let Mode::Fold { w, ldw, .. } = out.mode {
            // The epilogue reads a row each of `w` and the sums per tile row, scattered over
            // memory: ask for them now so that they arrive during the loop.
            for i in 0..mr {
                for h in [0, 16] {
                    _mm_prefetch::<_MM_HINT_T0>(w.add(i * ldw + h) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(out.c.add(i * out.ldc + h) as *const i8);
                }
            }
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(pb.add(p * NR));
            let b1 = _mm512_loadu_ps(pb.add(p * NR + 16));
            let ap = pa.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
        let (m0, m1) = lanes(nr);
        for (i, row) in acc.iter().enumerate().take(mr) {
            let cp = out.c.add(i * out.ldc);
            for (h, (v, m)) in [(row[0], m0), (row[1], m1)].into_iter().enumerate() {
                let cp = cp.add(16 * h);
                let v = match out.mode {
                    Mode::Write => v,
                    Mode::Add => _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cp)),
                    Mode::Fold { w, ldw, fold } => {
                        let wv = _mm512_maskz_loadu_ps(m, w.add(i * ldw + 16 * h));
                        let r = _mm512_mul_ps(wv, v);
                        let r = match fold {
                            Fold::Abs => _mm512_abs_ps(r),
                            Fold::Signed => r,
                            Fold::SquareW => _mm512_mul_ps(wv, r),
                        };
                        _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, cp))
                    }
                };
                _mm512_mask_storeu_ps(cp, m, v);
            }
        }
    }
}

/// Panels of `W` lanes, each `kc` steps of `W` values (`dst[panel][step][lane]`), zero-padded
/// past `lanes_total`; lane `l`, step `p` of the source at `base + l·ls + p·ss`. A's panels
/// have rows as lanes (W = MR), B's columns (W = NR). Lanes contiguous (`ls` = 1): masked
/// 16-lane copies; steps contiguous (`ss` = 1, a row-major A or the Wᵀ of a linear layer):
/// 16×16 register transposes; otherwise element by element.
#[target_feature(enable = "avx512f")]
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
        let panel = dst.add(pi * W * kc);
        let first = base.add(l0 * ls);
        if ls == 1 {
            // One pass over the steps, W/16 masked copies each.
            for p in 0..kc {
                for c0 in (0..W).step_by(16) {
                    let load = lanes(h.saturating_sub(c0)).0;
                    let store = lanes(16.min(W - c0)).0;
                    let v = _mm512_maskz_loadu_ps(load, first.add(p * ss + c0));
                    _mm512_mask_storeu_ps(panel.add(p * W + c0), store, v);
                }
            }
            continue;
        }
        for c0 in (0..W).step_by(16) {
            let width = 16.min(W - c0);
            let valid = h.saturating_sub(c0);
            if ss == 1 {
                let src: [*const f32; 16] = std::array::from_fn(|i| {
                    if i < valid {
                        first.add((c0 + i) * ls)
                    } else {
                        std::ptr::null()
                    }
                });
                transpose_into(&src, kc, panel.add(c0), W, width);
            } else {
                let valid = valid.min(width);
                pack_lanes(first, ls, ss, (c0, width, valid), kc, panel, W);
            }
        }
    }
}

/// `dst[p·ld + i] = src[i][p]` for p < len and i < width (≤ 16): 16 contiguous rows (null:
/// zeros) written as `len` rows of `width` values, through 16×16 register transposes.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_into(
    src: &[*const f32; 16],
    len: usize,
    dst: *mut f32,
    ld: usize,
    width: usize,
) {
    let mask: __mmask16 = if width >= 16 {
        0xffff
    } else {
        (1u32 << width) as u16 - 1
    };
    let mut p = 0;
    while p + 16 <= len {
        let r: [__m512; 16] = std::array::from_fn(|i| {
            if src[i].is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(src[i].add(p))
            }
        });
        let t = transpose16(r);
        for (q, v) in t.iter().enumerate() {
            _mm512_mask_storeu_ps(dst.add((p + q) * ld), mask, *v);
        }
        p += 16;
    }
    for q in p..len {
        for (i, s) in src.iter().enumerate().take(width) {
            *dst.add(q * ld + i) = if s.is_null() { 0.0 } else { *s.add(q) };
        }
    }
}

/// 16×16 transpose: `out[j][i] = r[i][j]` (unpack pairs, shuffle quads, then 128-bit lanes).
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let t: [__m512; 16] = std::array::from_fn(|x| {
        let (i, hi) = (x / 2, x % 2);
        if hi == 0 {
            _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1])
        } else {
            _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1])
        }
    });
    // u[4g + c], lane L: column 4L + c of rows 4g..4g+4.
    let u: [__m512; 16] = std::array::from_fn(|x| {
        let (g, c) = (x / 4, x % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let w = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w2 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v, w);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v, w);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v2, w2);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v2, w2);
    }
    out
}

/// Load masks for the first `w` (≤ 32) of two 16-lane vectors.
fn lanes(w: usize) -> (__mmask16, __mmask16) {
    let bits = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    (bits(w), bits(w.saturating_sub(16)))
}
