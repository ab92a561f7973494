//! The AVX2 + FMA tile and packing for [`packed`](super::packed): 6×16 (12 ymm accumulators,
//! two B vectors and one broadcast: 15 of the 16 registers), the shape BLIS uses on Haswell
//! and Zen; transposed operands (the linear layers' Wᵀ, row-major A) packed through 8×8
//! register transposes. For the CPUs without AVX-512: most laptops and desktops, AMD before
//! Zen 4 and many servers.

use super::packed::{pack_lanes, Fold, Isa, Mode, Tile, View};
use std::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;

pub struct Avx2;

impl Isa for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;
    fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    unsafe fn pack_a(a: View, ic: usize, pc: usize, mc: usize, kc: usize, dst: *mut f32) {
        pack::<MR>(a.ptr.add(ic * a.rs + pc * a.cs), a.rs, a.cs, mc, kc, dst)
    }
    unsafe fn pack_b(b: View, pc: usize, jc: usize, kc: usize, nc: usize, dst: *mut f32) {
        pack::<NR>(b.ptr.add(pc * b.rs + jc * b.cs), b.cs, b.rs, nc, kc, dst)
    }
    /// The 6×16 tile (the helpers inline here: same target features).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel(kc: usize, pa: *const f32, pb: *const f32, out: Tile, mr: usize, nr: usize) {
        if let Mode::Fold { w, ldw, .. } = out.mode {
            prefetch_epilogue(out, w, ldw, mr);
        }
        let acc = product(kc, pa, pb);
        epilogue(&acc, out, mr, nr);
    }
}

/// The fold's epilogue reads a row each of `w` and the sums per tile row, scattered over
/// memory: ask for them before the loop so that they arrive during it.
#[target_feature(enable = "avx2,fma")]
unsafe fn prefetch_epilogue(out: Tile, w: *const f32, ldw: usize, mr: usize) {
    for i in 0..mr {
        for h in [0, 8] {
            _mm_prefetch::<_MM_HINT_T0>(w.add(i * ldw + h) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(out.c.add(i * out.ldc + h) as *const i8);
        }
    }
}

/// The 6×16 product over kc: B rows loaded, A elements broadcast.
#[target_feature(enable = "avx2,fma")]
unsafe fn product(kc: usize, pa: *const f32, pb: *const f32) -> [[__m256; 2]; MR] {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(pb.add(p * NR));
        let b1 = _mm256_loadu_ps(pb.add(p * NR + 8));
        let ap = pa.add(p * MR);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*ap.add(i));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
    }
    acc
}

/// Put the first `mr`×`nr` of the tile into `out` as its mode says.
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue(acc: &[[__m256; 2]; MR], out: Tile, mr: usize, nr: usize) {
    let sign = _mm256_set1_ps(-0.0);
    for (i, row) in acc.iter().enumerate().take(mr) {
        let cp = out.c.add(i * out.ldc);
        for (h, v) in row.iter().enumerate() {
            let n = nr.saturating_sub(8 * h).min(8);
            if n == 0 {
                break;
            }
            let cp = cp.add(8 * h);
            // Whole rows with plain moves: AMD cores store masked moves slowly.
            let m = mask(n);
            let load = |p: *const f32| {
                if n == 8 {
                    _mm256_loadu_ps(p)
                } else {
                    _mm256_maskload_ps(p, m)
                }
            };
            let v = match out.mode {
                Mode::Write => *v,
                Mode::Add => _mm256_add_ps(*v, load(cp)),
                Mode::Fold { w, ldw, fold } => {
                    let wv = load(w.add(i * ldw + 8 * h));
                    let r = _mm256_mul_ps(wv, *v);
                    let r = match fold {
                        Fold::Abs => _mm256_andnot_ps(sign, r),
                        Fold::Signed => r,
                        Fold::SquareW => _mm256_mul_ps(wv, r),
                    };
                    _mm256_add_ps(r, load(cp))
                }
            };
            if n == 8 {
                _mm256_storeu_ps(cp, v);
            } else {
                _mm256_maskstore_ps(cp, m, v);
            }
        }
    }
}

/// Lane mask selecting the first `n` (≤ 8) of 8 lanes.
#[inline(always)]
unsafe fn mask(n: usize) -> __m256i {
    const M: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    _mm256_loadu_si256(M.as_ptr().add(8 - n.min(8)) as *const __m256i)
}

/// Panels of `W` lanes, each `kc` steps of `W` values (`dst[panel][step][lane]`), zero-padded
/// past `lanes_total`; lane `l`, step `p` of the source at `base + l·ls + p·ss`. A's panels
/// have rows as lanes (W = MR), B's columns (W = NR). Lanes contiguous (`ls` = 1): masked
/// 8-lane copies; steps contiguous (`ss` = 1, a row-major A or the Wᵀ of a linear layer):
/// 8×8 register transposes; otherwise element by element.
#[target_feature(enable = "avx2,fma")]
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
        for c0 in (0..W).step_by(8) {
            let width = 8.min(W - c0);
            let valid = h.saturating_sub(c0).min(width);
            if ls == 1 {
                let load = mask(valid);
                for p in 0..kc {
                    let v = _mm256_maskload_ps(first.add(p * ss + c0), load);
                    _mm256_storeu_ps(panel.add(p * W + c0), v);
                }
            } else if ss == 1 {
                let src: [*const f32; 8] = std::array::from_fn(|i| {
                    if i < valid {
                        first.add((c0 + i) * ls)
                    } else {
                        std::ptr::null()
                    }
                });
                transpose_into(&src, kc, panel.add(c0), W, width);
            } else {
                pack_lanes(first, ls, ss, (c0, width, valid), kc, panel, W);
            }
        }
    }
}

/// `dst[p·ld + i] = src[i][p]` for p < len and i < width (≤ 8): 8 contiguous rows (null:
/// zeros) written as `len` rows of `width` values, through 8×8 register transposes. Rows are
/// stored whole (8 values) in increasing order, so a narrower row spills into the next one
/// before that is written (and past the end: see [`Isa::pack_a`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_into(
    src: &[*const f32; 8],
    len: usize,
    dst: *mut f32,
    ld: usize,
    width: usize,
) {
    let mut p = 0;
    while p + 8 <= len {
        let r: [__m256; 8] = std::array::from_fn(|i| {
            if src[i].is_null() {
                _mm256_setzero_ps()
            } else {
                _mm256_loadu_ps(src[i].add(p))
            }
        });
        for (q, v) in transpose8(r).iter().enumerate() {
            _mm256_storeu_ps(dst.add((p + q) * ld), *v);
        }
        p += 8;
    }
    for q in p..len {
        for (i, s) in src.iter().enumerate().take(width) {
            *dst.add(q * ld + i) = if s.is_null() { 0.0 } else { *s.add(q) };
        }
    }
}

/// 8×8 transpose: `out[j][i] = r[i][j]` (unpack pairs, shuffle quads, swap 128-bit halves).
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|x| {
        let (i, hi) = (x / 2, x % 2);
        if hi == 0 {
            _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1])
        } else {
            _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1])
        }
    });
    // u[4g + c], 128-bit half L: column 4L + c of rows 4g..4g+4.
    let u: [__m256; 8] = std::array::from_fn(|x| {
        let (g, c) = (x / 4, x % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    std::array::from_fn(|j| {
        let (half, c) = (j / 4, j % 4);
        if half == 0 {
            _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c])
        } else {
            _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c])
        }
    })
}
