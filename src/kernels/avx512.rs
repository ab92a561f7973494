//! f32 matrix product for x86-64 CPUs with AVX-512F: `C = A · B`, BLIS-style.
//!
//! Neither the `gemm` crate (AVX-512 only behind its nightly feature) nor Debian's OpenBLAS 0.3.21
//! (which takes recent AMD cores for Haswell) uses 512-bit registers, and PyTorch's MKL does not
//! on AMD: on an AVX-512 core this kernel does twice the work per instruction. A and B are strided
//! views (row-major or transposed, never copied): B is packed into KC×NR column panels, A into
//! MR×KC row panels, and an 8×32 register tile (16 zmm accumulators) runs over KC. Work is split
//! over the rayon pool by output columns (or rows); every output element is summed in the same
//! order whatever the split, so results do not depend on the thread count.

use std::arch::x86_64::*;
use std::cell::RefCell;

const MR: usize = 8;
const NR: usize = 32;
const KC: usize = 256;
const MC: usize = 256;
const NC: usize = 4096;

/// A strided matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: views are only read, by tasks that end before `matmul` returns.
unsafe impl Send for View {}
unsafe impl Sync for View {}

pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

thread_local! {
    static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `C[m×n] = A[m×k] · B[k×n]` into `c` (row-major, leading dimension `n`), overwriting it.
///
/// # Safety
/// `available()` must hold; `a` and `b` must address m×k and k×n readable f32 values; `c` must
/// have room for m·n values.
pub unsafe fn matmul(m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        std::ptr::write_bytes(c, 0, m * n);
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let flops = m * n * k;
    let (col_tiles, row_tiles) = (n.div_ceil(NR), m.div_ceil(MR));
    let parts = if flops < 1 << 18 {
        1
    } else {
        threads.min(col_tiles.max(row_tiles))
    };
    if parts <= 1 {
        block(m, n, k, a, b, Out(c), n);
        return;
    }
    let out = c as usize; // moved into the tasks as an address: each writes its own block
                          // Split columns into `parts` contiguous tile ranges where there are enough (each part then
                          // packs only its share of B), else rows.
    let by_cols = col_tiles >= parts || col_tiles >= row_tiles;
    let (tiles, tile) = if by_cols {
        (col_tiles, NR)
    } else {
        (row_tiles, MR)
    };
    rayon::scope(|s| {
        for p in 0..parts {
            let lo = tiles * p / parts * tile;
            let hi = (tiles * (p + 1) / parts * tile).min(if by_cols { n } else { m });
            if lo >= hi {
                continue;
            }
            s.spawn(move |_| {
                // SAFETY: the blocks [lo, hi) of columns (or rows) are disjoint across parts.
                unsafe {
                    if by_cols {
                        let b = View {
                            ptr: b.ptr.add(lo * b.cs),
                            ..b
                        };
                        block(m, hi - lo, k, a, b, Out((out as *mut f32).add(lo)), n);
                    } else {
                        let a = View {
                            ptr: a.ptr.add(lo * a.rs),
                            ..a
                        };
                        block(hi - lo, n, k, a, b, Out((out as *mut f32).add(lo * n)), n);
                    }
                }
            });
        }
    });
}

/// `matmul` on the calling thread alone (for many small products run in parallel).
///
/// # Safety
/// As for `matmul`.
pub unsafe fn matmul_single(m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        std::ptr::write_bytes(c, 0, m * n);
        return;
    }
    block(m, n, k, a, b, Out(c), n);
}

/// One thread's product of an m×n block of C (leading dimension `ldc`).
unsafe fn block(m: usize, n: usize, k: usize, a: View, b: View, c: Out, ldc: usize) {
    PACK.with(|buf| {
        let mut buf = buf.borrow_mut();
        let (pa, pb) = &mut *buf;
        let need_a = MC.min(m.next_multiple_of(MR)) * KC;
        let need_b = NC.min(n.next_multiple_of(NR)) * KC;
        if pa.len() < need_a {
            pa.resize(need_a, 0.0);
        }
        if pb.len() < need_b {
            pb.resize(need_b, 0.0);
        }
        // Equal k blocks of at most KC (576 → 3 × 192, not 256 + 256 + 64), rounded up to
        // whole 16-row transposes.
        let kb = k.div_ceil(k.div_ceil(KC)).next_multiple_of(16).min(KC);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(kb) {
                let kc = kb.min(k - pc);
                pack_b(b, pc, jc, kc, nc, pb);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    pack_a(a, ic, pc, mc, kc, pa);
                    for jr in (0..nc).step_by(NR) {
                        for ir in (0..mc).step_by(MR) {
                            kernel(
                                kc,
                                pa.as_ptr().add(ir * kc),
                                pb.as_ptr().add(jr * kc),
                                c.0.add((ic + ir) * ldc + jc + jr),
                                ldc,
                                MR.min(mc - ir),
                                NR.min(nc - jr),
                                pc > 0,
                            );
                        }
                    }
                }
            }
        }
    });
}

/// B[pc.., jc..] (kc×nc) into NR-wide panels, each kc rows of NR values, zero-padded.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b(b: View, pc: usize, jc: usize, kc: usize, nc: usize, dst: &mut [f32]) {
    for (pi, j0) in (0..nc).step_by(NR).enumerate() {
        let w = NR.min(nc - j0);
        let panel = dst[pi * NR * kc..(pi + 1) * NR * kc].as_mut_ptr();
        let base = b.ptr.add(pc * b.rs + (jc + j0) * b.cs);
        if b.cs == 1 {
            // Two (masked) 16-lane copies per row; zeros beyond the edge.
            let (m0, m1) = lanes(w);
            for p in 0..kc {
                let src = base.add(p * b.rs);
                let row = panel.add(p * NR);
                _mm512_storeu_ps(row, _mm512_maskz_loadu_ps(m0, src));
                _mm512_storeu_ps(row.add(16), _mm512_maskz_loadu_ps(m1, src.add(16)));
            }
        } else if b.rs == 1 {
            // Transposed (the linear layers' Wᵀ): column j of B is a contiguous row of W.
            for jb in (0..NR).step_by(16) {
                let cols: [*const f32; 16] = std::array::from_fn(|i| {
                    if jb + i < w {
                        base.add((jb + i) * b.cs)
                    } else {
                        std::ptr::null()
                    }
                });
                transpose_into(&cols, kc, panel.add(jb), NR, 16);
            }
        } else {
            for j in 0..NR {
                for p in 0..kc {
                    *panel.add(p * NR + j) = if j < w {
                        *base.add(p * b.rs + j * b.cs)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// A[ic.., pc..] (mc×kc) into MR-high panels, each kc columns of MR values, zero-padded.
#[target_feature(enable = "avx512f")]
unsafe fn pack_a(a: View, ic: usize, pc: usize, mc: usize, kc: usize, dst: &mut [f32]) {
    for (pi, i0) in (0..mc).step_by(MR).enumerate() {
        let h = MR.min(mc - i0);
        let panel = dst[pi * MR * kc..(pi + 1) * MR * kc].as_mut_ptr();
        let base = a.ptr.add((ic + i0) * a.rs + pc * a.cs);
        if a.rs == 1 {
            let m = lanes(h).0;
            for p in 0..kc {
                let v = _mm512_maskz_loadu_ps(m, base.add(p * a.cs));
                _mm512_mask_storeu_ps(panel.add(p * MR), (1u32 << MR) as u16 - 1, v);
            }
        } else if a.cs == 1 {
            // Row-major A: row i of the panel is a contiguous row of A.
            let rows: [*const f32; 16] = std::array::from_fn(|i| {
                if i < h {
                    base.add(i * a.rs)
                } else {
                    std::ptr::null()
                }
            });
            transpose_into(&rows, kc, panel, MR, MR);
        } else {
            for i in 0..MR {
                for p in 0..kc {
                    *panel.add(p * MR + i) = if i < h {
                        *base.add(i * a.rs + p * a.cs)
                    } else {
                        0.0
                    };
                }
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

/// The MR×NR tile `C (+)= Apanel · Bpanel` over kc; only `mr`×`nr` of it is stored.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    pa: *const f32,
    pb: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
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
        let cp = c.add(i * ldc);
        let (mut v0, mut v1) = (row[0], row[1]);
        if accumulate {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cp));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cp.add(16)));
        }
        _mm512_mask_storeu_ps(cp, m0, v0);
        _mm512_mask_storeu_ps(cp.add(16), m1, v1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ar: usize,
        ac: usize,
        b: &[f32],
        br: usize,
        bc: usize,
    ) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * ar + p * ac] as f64 * b[p * br + j * bc] as f64)
                    .sum();
            }
        }
        c
    }

    /// Every shape class (edges in all three dimensions, several KC/MC/NC blocks, one and many
    /// threads) and every operand layout (row-major, transposed, padded leading dimension)
    /// against a float64 reference.
    #[test]
    fn matches_a_float64_reference_for_every_layout_and_edge() {
        if !available() {
            return;
        }
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 256),
            (9, 33, 257),
            (17, 70, 600),
            (130, 40, 3),
            (300, 4100, 20),
            (64, 600, 520),
            (260, 7, 300),
        ];
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let pad = 3;
                // Stored with a padded leading dimension; transposed ones stored k-major.
                let (ar, ac, alen) = if ta {
                    (1, m + pad, k * (m + pad))
                } else {
                    (k + pad, 1, m * (k + pad))
                };
                let (br, bc, blen) = if tb {
                    (1, k + pad, n * (k + pad))
                } else {
                    (n + pad, 1, k * (n + pad))
                };
                let a: Vec<f32> = (0..alen).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..blen).map(|_| rnd()).collect();
                let mut c = vec![f32::NAN; m * n];
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| unsafe {
                        matmul(
                            m,
                            n,
                            k,
                            View {
                                ptr: a.as_ptr(),
                                rs: ar,
                                cs: ac,
                            },
                            View {
                                ptr: b.as_ptr(),
                                rs: br,
                                cs: bc,
                            },
                            c.as_mut_ptr(),
                        )
                    });
                    let r = reference(m, n, k, &a, ar, ac, &b, br, bc);
                    for (x, y) in c.iter().zip(&r) {
                        assert!(
                            (*x as f64 - y).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                            "{m}x{n}x{k} ta={ta} tb={tb} threads={threads}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}
