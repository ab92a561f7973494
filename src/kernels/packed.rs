//! Packed f32 matrix product `C = A · B`, BLIS-style, for CPUs whose vector units candle's
//! `gemm` crate and the system BLAS leave half idle.
//!
//! A and B are strided views (row-major or transposed, never copied): B is packed into KC×NR
//! column panels, A into MR×KC row panels, and an MR×NR register tile runs over KC. An
//! instruction set supplies the tile and the packing ([`Isa`]: `avx512.rs`, `avx2.rs`,
//! `portable.rs`); this file holds the blocking and the threading. Work is split over the rayon pool
//! by output columns (or rows); every output element is summed in the same order whatever the
//! split, so results do not depend on the thread count. [`matmul_fold`] adds a function of the
//! product to a running sum in the tile's epilogue instead of storing the product.

use std::cell::RefCell;

const KC: usize = 256;
/// The k block for outputs too large for the cache ([`LARGE_C`]): every further block re-reads
/// and re-writes the whole output from memory (a third of the time of the 49152-wide output
/// layer at 256).
const KC_LARGE_C: usize = 640;
/// Output size (bytes) above which C streams from memory rather than staying in the caches
/// (the output layer's 512 × 49152 floats are 96 MiB; a 512-token MLP output is 3 MiB, where
/// 256 and 640 measured alike).
const LARGE_C: usize = 8 << 20;
const MC: usize = 256;
const NC: usize = 4096;
/// Values a packing routine may write past the last panel.
pub const SLACK: usize = 16;

/// One instruction set's register tile and packing routines.
pub trait Isa {
    /// Tile rows and columns.
    const MR: usize;
    const NR: usize;
    fn available() -> bool;
    /// A[ic.., pc..] (mc×kc) into MR-high panels, each kc columns of MR values, zero-padded.
    /// Panels are written in order and may be overwritten past their end by up to [`SLACK`]
    /// values (whole-vector stores of a narrower panel row).
    ///
    /// # Safety
    /// `available()`; the view covers the block; `dst` holds ⌈mc/MR⌉·MR·kc + SLACK values.
    unsafe fn pack_a(a: View, ic: usize, pc: usize, mc: usize, kc: usize, dst: *mut f32);
    /// B[pc.., jc..] (kc×nc) into NR-wide panels, each kc rows of NR values, zero-padded.
    ///
    /// # Safety
    /// As for `pack_a`, with ⌈nc/NR⌉·NR·kc + SLACK values.
    unsafe fn pack_b(b: View, pc: usize, jc: usize, kc: usize, nc: usize, dst: *mut f32);
    /// The MR×NR tile `Apanel · Bpanel` over kc, put into `out` as its mode says; only
    /// `mr`×`nr` of it is stored.
    ///
    /// # Safety
    /// `available()`; panels as packed above; `out` addresses mr rows of nr values (and as
    /// many of `w` for a fold).
    unsafe fn kernel(kc: usize, pa: *const f32, pb: *const f32, out: Tile, mr: usize, nr: usize);
}

/// How a finished product `P` is combined with another matrix `w` into the output: the
/// per-weight relevance `w ⊙ P` of a linear layer is added to its running sum while the tile
/// is still in registers, so the `[out, in]` product is never written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// `c += |w·p|`
    Abs,
    /// `c += w·p`
    Signed,
    /// `c += w²·p`
    SquareW,
}

impl Fold {
    /// The term one element adds (the kernels' vector epilogues compute the same).
    #[inline]
    pub fn term(self, w: f32, p: f32) -> f32 {
        match self {
            Fold::Abs => (w * p).abs(),
            Fold::Signed => w * p,
            Fold::SquareW => w * w * p,
        }
    }
}

/// What a tile does with its result at `c` (leading dimension `ldc`).
#[derive(Clone, Copy)]
pub struct Tile {
    pub c: *mut f32,
    pub ldc: usize,
    pub mode: Mode,
}

/// How a tile's product `p` meets the output.
#[derive(Clone, Copy)]
pub enum Mode {
    /// `c = p`
    Write,
    /// `c += p` (a later block of k)
    Add,
    /// `c += fold(w, p)`, `w` at `w` with leading dimension `ldw`.
    Fold {
        w: *const f32,
        ldw: usize,
        fold: Fold,
    },
}

impl Tile {
    /// The tile whose top-left element is (i, j) of this one.
    ///
    /// # Safety
    /// (i, j) lies inside the matrices addressed.
    unsafe fn at(self, i: usize, j: usize) -> Tile {
        Tile {
            c: self.c.add(i * self.ldc + j),
            mode: match self.mode {
                Mode::Fold { w, ldw, fold } => Mode::Fold {
                    w: w.add(i * ldw + j),
                    ldw,
                    fold,
                },
                m => m,
            },
            ..self
        }
    }
}

// SAFETY: each task writes only its own block of the output.
unsafe impl Send for Tile {}
unsafe impl Sync for Tile {}

/// A strided matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: views are only read, by tasks that end before `matmul` returns.
unsafe impl Send for View {}
unsafe impl Sync for View {}

/// Lanes `c0..c0 + width` of one panel of `w` lanes per step, element by element (the
/// packing of operands strided both ways, and the portable tile's): lane `i`, step `p` from
/// `first + (c0 + i)·ls + p·ss`, zero from lane `c0 + valid` on.
///
/// # Safety
/// The source lanes below `valid` and `kc` steps are readable; `panel` holds `kc·w` values.
pub(super) unsafe fn pack_lanes(
    first: *const f32,
    ls: usize,
    ss: usize,
    (c0, width, valid): (usize, usize, usize),
    kc: usize,
    panel: *mut f32,
    w: usize,
) {
    for i in 0..width {
        for p in 0..kc {
            *panel.add(p * w + c0 + i) = if i < valid {
                *first.add((c0 + i) * ls + p * ss)
            } else {
                0.0
            };
        }
    }
}

thread_local! {
    static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `C[m×n] = A[m×k] · B[k×n]` into `c` (row-major, leading dimension `n`), overwriting it, on
/// the rayon pool.
///
/// # Safety
/// `I::available()` must hold; `a` and `b` must address m×k and k×n readable f32 values; `c` must
/// have room for m·n values.
pub unsafe fn matmul<I: Isa>(m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32) {
    let out = Tile {
        c,
        ldc: n,
        mode: Mode::Write,
    };
    split::<I>(m, n, k, a, b, out, rayon::current_num_threads().max(1))
}

/// `acc[i, j] += fold(w[i, j], (A · B)[i, j])` for `acc` and `w` row-major m×n (leading
/// dimension `n`), on the rayon pool: k is not blocked, so every tile is final when the
/// kernel leaves it.
///
/// # Safety
/// As for `matmul`; `w` must address m·n readable values and `acc` m·n writable ones.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_fold<I: Isa>(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    w: *const f32,
    acc: *mut f32,
    fold: Fold,
) {
    if k == 0 {
        return; // the product is zero: nothing to add
    }
    let out = Tile {
        c: acc,
        ldc: n,
        mode: Mode::Fold { w, ldw: n, fold },
    };
    split::<I>(m, n, k, a, b, out, rayon::current_num_threads().max(1))
}

/// `matmul` on the calling thread alone (for many small products run in parallel).
///
/// # Safety
/// As for `matmul`.
pub unsafe fn matmul_single<I: Isa>(m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32) {
    let out = Tile {
        c,
        ldc: n,
        mode: Mode::Write,
    };
    split::<I>(m, n, k, a, b, out, 1)
}

/// `matmul` in at most `threads` parts.
unsafe fn split<I: Isa>(m: usize, n: usize, k: usize, a: View, b: View, out: Tile, threads: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            std::ptr::write_bytes(out.c.add(i * out.ldc), 0, n);
        }
        return;
    }
    let c_bytes = m * n * std::mem::size_of::<f32>();
    let (col_tiles, row_tiles) = (n.div_ceil(I::NR), m.div_ceil(I::MR));
    let parts = if m * n * k < 1 << 18 {
        1
    } else {
        threads.min(col_tiles.max(row_tiles))
    };
    if parts <= 1 {
        block::<I>(m, n, k, a, b, out, c_bytes);
        return;
    }
    // Split columns into `parts` contiguous tile ranges where there are enough (each part then
    // packs only its share of B), else rows.
    let by_cols = col_tiles >= parts || col_tiles >= row_tiles;
    let (tiles, tile) = if by_cols {
        (col_tiles, I::NR)
    } else {
        (row_tiles, I::MR)
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
                        block::<I>(m, hi - lo, k, a, b, out.at(0, lo), c_bytes);
                    } else {
                        let a = View {
                            ptr: a.ptr.add(lo * a.rs),
                            ..a
                        };
                        block::<I>(hi - lo, n, k, a, b, out.at(lo, 0), c_bytes);
                    }
                }
            });
        }
    });
}

/// One thread's product of an m×n block of the output.
/// `c_bytes`: the size of the whole product's output.
unsafe fn block<I: Isa>(m: usize, n: usize, k: usize, a: View, b: View, out: Tile, c_bytes: usize) {
    let fold = matches!(out.mode, Mode::Fold { .. });
    // Equal k blocks of at most KC (576 → 3 × 192, not 256 + 256 + 64), rounded up to whole
    // 16-row transposes, or of KC_LARGE_C for an output that does not fit in the cache (one
    // block for 576); a fold takes k whole (its k is a sequence's tokens) with fewer rows of A
    // per block instead, keeping the packed A block as small. The choice depends on the whole
    // product's shape (`c_bytes`), not on this thread's part of it.
    let kmax = if c_bytes > LARGE_C { KC_LARGE_C } else { KC };
    let kb = if fold {
        k
    } else {
        k.div_ceil(k.div_ceil(kmax)).next_multiple_of(16).min(kmax)
    };
    let mcb = (MC * KC / kb.max(KC)).max(I::MR) / I::MR * I::MR; // whole panels per A block
    PACK.with(|buf| {
        let mut buf = buf.borrow_mut();
        let (pa, pb) = &mut *buf;
        let need_a = mcb.min(m.next_multiple_of(I::MR)) * kb + SLACK;
        let need_b = NC.min(n.next_multiple_of(I::NR)) * kb + SLACK;
        if pa.len() < need_a {
            pa.resize(need_a, 0.0);
        }
        if pb.len() < need_b {
            pb.resize(need_b, 0.0);
        }
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(kb) {
                let kc = kb.min(k - pc);
                I::pack_b(b, pc, jc, kc, nc, pb.as_mut_ptr());
                for ic in (0..m).step_by(mcb) {
                    let mc = mcb.min(m - ic);
                    I::pack_a(a, ic, pc, mc, kc, pa.as_mut_ptr());
                    for jr in (0..nc).step_by(I::NR) {
                        for ir in (0..mc).step_by(I::MR) {
                            let mut tile = out.at(ic + ir, jc + jr);
                            if pc > 0 {
                                tile.mode = Mode::Add;
                            }
                            I::kernel(
                                kc,
                                pa.as_ptr().add(ir * kc),
                                pb.as_ptr().add(jr * kc),
                                tile,
                                I::MR.min(mc - ir),
                                I::NR.min(nc - jr),
                            );
                        }
                    }
                }
            }
        }
    });
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
    /// against a float64 reference, for the plain product and each fused fold.
    #[test]
    fn matches_a_float64_reference_for_every_layout_and_edge() {
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::avx512::Avx512::available() {
                check::<super::super::avx512::Avx512>();
            }
            if super::super::avx2::Avx2::available() {
                check::<super::super::avx2::Avx2>();
            }
        }
        check::<super::super::portable::Portable>();
    }

    fn check<I: Isa>() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 256),
            (9, 33, 257),
            (17, 70, 600),
            (130, 40, 3),
            (300, 4100, 20),
            (64, 600, 520),
            (520, 40, 700),
            (260, 7, 300),
            (40, 60000, 300), // an output past LARGE_C: k blocks of up to KC_LARGE_C
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
                if m * n > 1 << 21 && (ta, !tb) != (false, false) {
                    continue; // the large output: the linear layers' x · Wᵀ only (time)
                }
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
                let va = View {
                    ptr: a.as_ptr(),
                    rs: ar,
                    cs: ac,
                };
                let vb = View {
                    ptr: b.as_ptr(),
                    rs: br,
                    cs: bc,
                };
                let r = reference(m, n, k, &a, ar, ac, &b, br, bc);
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| unsafe { matmul::<I>(m, n, k, va, vb, c.as_mut_ptr()) });
                    for (x, y) in c.iter().zip(&r) {
                        assert!(
                            (*x as f64 - y).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                            "{}: {m}x{n}x{k} ta={ta} tb={tb} threads={threads}: {x} vs {y}",
                            std::any::type_name::<I>()
                        );
                    }
                    // The fused fold onto running sums, for each fold.
                    let w: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                    let start: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                    for fold in [Fold::Abs, Fold::Signed, Fold::SquareW] {
                        let mut acc = start.clone();
                        pool.install(|| unsafe {
                            matmul_fold::<I>(m, n, k, va, vb, w.as_ptr(), acc.as_mut_ptr(), fold)
                        });
                        for e in 0..m * n {
                            let (wv, p) = (w[e] as f64, r[e]);
                            let want = start[e] as f64
                                + match fold {
                                    Fold::Abs => (wv * p).abs(),
                                    Fold::Signed => wv * p,
                                    Fold::SquareW => wv * wv * p,
                                };
                            assert!(
                                (acc[e] as f64 - want).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                                "{fold:?} {m}x{n}x{k} ta={ta} tb={tb} threads={threads}: {} vs {want}",
                                acc[e]
                            );
                        }
                    }
                }
            }
        }
    }
}
