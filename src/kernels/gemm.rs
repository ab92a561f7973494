//! 2-D matrix products for the linear layers and the relevance pass.
//!
//! f32 products on the CPU go, in order of preference, to our packed kernel (`packed.rs`) with
//! the AVX-512 tile (`avx512.rs`) or the AVX2 + FMA tile (`avx2.rs`), to `cblas_sgemm` of the
//! `openblas` or `mkl` cargo feature, or to candle's matmul (the `gemm` crate). Operands may be
//! contiguous or transposed views, never copied. `SPARC3_GEMM=avx512|avx2|portable|blas|candle`
//! forces one (for comparisons; `portable` is the packed driver with a plain-Rust tile, the
//! way other CPUs can run it); `avx2` and `portable` also hold the elementwise kernels to that
//! width (see [`level`](super::level)).

#[cfg(target_arch = "x86_64")]
use super::Level;
use anyhow::Result;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use std::sync::OnceLock;

pub use super::packed::Fold;

/// Which register tile drives the packed product.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tile {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Packed(Tile),
    Blas,
    Candle,
}

/// `f::<I>()` with `I` the instruction set of `tile`.
macro_rules! on_tile {
    ($tile:expr, $f:ident ( $($arg:expr),* )) => {
        match $tile {
            #[cfg(target_arch = "x86_64")]
            Tile::Avx512 => $f::<super::avx512::Avx512>($($arg),*),
            #[cfg(target_arch = "x86_64")]
            Tile::Avx2 => $f::<super::avx2::Avx2>($($arg),*),
            Tile::Portable => $f::<super::portable::Portable>($($arg),*),
        }
    };
}

fn chosen() -> Backend {
    static B: OnceLock<Backend> = OnceLock::new();
    *B.get_or_init(|| {
        let asked = std::env::var("SPARC3_GEMM").ok();
        let b = pick(asked.as_deref());
        if let Some(a) = &asked {
            if name(b) != a.as_str() {
                eprintln!(
                    "warning: SPARC3_GEMM={a} is not one of avx512, avx2, portable, blas, candle available here; using {}",
                    name(b)
                );
            }
        }
        b
    })
}

/// The backend asked for where this build and CPU have it, else the best one available.
fn pick(asked: Option<&str>) -> Backend {
    let blas = cfg!(any(feature = "openblas", feature = "mkl"));
    let level = super::level();
    let best = match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => Backend::Packed(Tile::Avx512),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => Backend::Packed(Tile::Avx2),
        _ if blas => Backend::Blas,
        _ => Backend::Candle,
    };
    match asked {
        Some("candle") => Backend::Candle,
        Some("blas") if blas => Backend::Blas,
        Some("portable") => Backend::Packed(Tile::Portable),
        _ => best,
    }
}

/// `a · b` for 2-D tensors (`[m, k] · [k, n]`); either operand may be a transposed view.
pub fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(a, b, false)
}

/// Batched product over the two leading axes: `[B, H, m, k] · [B, H, k, n]` → `[B, H, m, n]`;
/// the last two axes of either operand may be a transposed view.
pub fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(a, b, true)
}

/// The chosen backend's product where it can read the operands as they are (f32 on the CPU,
/// strided views), else candle's.
fn product(a: &Tensor, b: &Tensor, batched: bool) -> Result<Tensor> {
    use packed_ops::{bmm, mm};
    let fast = match chosen() {
        Backend::Packed(t) if batched => on_tile!(t, bmm(a, b))?,
        Backend::Packed(t) => on_tile!(t, mm(a, b))?,
        #[cfg(any(feature = "openblas", feature = "mkl"))]
        Backend::Blas if batched => blas::bmm(a, b)?,
        #[cfg(any(feature = "openblas", feature = "mkl"))]
        Backend::Blas => blas::mm(a, b)?,
        _ => None,
    };
    match fast {
        Some(c) => Ok(c),
        None => Ok(a.matmul(b)?),
    }
}

/// Number of threads the BLAS backend uses (no-op without the `openblas` feature; the packed
/// kernels run on the rayon pool).
pub fn set_threads(n: usize) {
    #[cfg(any(feature = "openblas", feature = "mkl"))]
    blas::set_threads(n);
    #[cfg(not(any(feature = "openblas", feature = "mkl")))]
    let _ = n;
}

/// The matrix kernel in use, as `SPARC3_GEMM` names it (`blas`: the linked library's name).
pub fn backend() -> &'static str {
    match chosen() {
        Backend::Blas if cfg!(feature = "mkl") => "mkl",
        Backend::Blas => "openblas",
        Backend::Candle => "candle-gemm",
        b => name(b),
    }
}

fn name(b: Backend) -> &'static str {
    match b {
        #[cfg(target_arch = "x86_64")]
        Backend::Packed(Tile::Avx512) => "avx512",
        #[cfg(target_arch = "x86_64")]
        Backend::Packed(Tile::Avx2) => "avx2",
        Backend::Packed(Tile::Portable) => "portable",
        Backend::Blas => "blas",
        Backend::Candle => "candle",
    }
}

/// One operand as the kernels read it: its first element, whether it is a transposed view,
/// and its leading dimension.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    transposed: bool,
    ld: usize,
}
impl Operand {
    /// The operand starting at `v[offset]` with a layout from [`strided_view`].
    fn new(v: &[f32], offset: usize, (transposed, ld): (bool, usize)) -> Self {
        Operand {
            ptr: v[offset..].as_ptr(),
            transposed,
            ld,
        }
    }
}

// SAFETY: operands are only read, by tasks that end before the product returns.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

/// (transposed?, leading dimension) of a 2-D layout, if a strided kernel can read it as is.
fn strided_view(l: &Layout) -> Option<(bool, usize)> {
    let d = l.dims();
    let s = l.stride();
    if d.len() != 2 {
        return None;
    }
    if s[1] == 1 && s[0] >= d[1].max(1) {
        Some((false, s[0]))
    } else if s[0] == 1 && s[1] >= d[0].max(1) {
        Some((true, s[1]))
    } else {
        None
    }
}

/// The f32 CPU storage of a tensor, if it has one.
fn cpu_f32(s: &Storage) -> Option<&[f32]> {
    match s {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v),
        _ => None,
    }
}

fn both_cpu_f32(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32
}

/// `f(m, n, k, a, b)` on the operands of `a · b` (2-D) where both are f32 CPU strided views;
/// `None` where they are not.
fn with_operands<R>(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(usize, usize, usize, Operand, Operand) -> R,
) -> Result<Option<R>> {
    if !both_cpu_f32(a, b) {
        return Ok(None);
    }
    let (m, k) = a.dims2()?;
    let (k2, n) = b.dims2()?;
    if k != k2 {
        anyhow::bail!("matmul shape mismatch: [{m}, {k}] · [{k2}, {n}]");
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some(va), Some(vb)) = (cpu_f32(&sa), cpu_f32(&sb)) else {
        return Ok(None);
    };
    let (Some(sva), Some(svb)) = (strided_view(la), strided_view(lb)) else {
        return Ok(None);
    };
    let x = Operand::new(va, la.start_offset(), sva);
    let y = Operand::new(vb, lb.start_offset(), svb);
    Ok(Some(f(m, n, k, x, y)))
}

/// `a · b` (2-D) by `f(m, n, k, a, b, out)`, which must write all m·n outputs (row-major),
/// where both operands are f32 CPU strided views; `None` where they are not.
fn strided_mm(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(usize, usize, usize, Operand, Operand, *mut f32),
) -> Result<Option<Tensor>> {
    let c = with_operands(a, b, |m, n, k, x, y| {
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        if m > 0 && n > 0 {
            f(m, n, k, x, y, c.as_mut_ptr());
            // SAFETY: `f` has written every one of the m·n outputs.
            unsafe { c.set_len(m * n) };
        }
        (c, m, n)
    })?;
    c.map(|(c, m, n)| Ok(Tensor::from_vec(c, (m, n), a.device())?))
        .transpose()
}

/// `acc[i, j] += fold(w[i, j], (a · b)[i, j])` without forming `a · b` (`w` and `acc` row-major
/// `[m, n]`), where the chosen backend can fuse it: a packed kernel with f32 CPU operands.
/// Returns false, having done nothing, elsewhere.
pub fn mm_fold(a: &Tensor, b: &Tensor, w: &[f32], acc: &mut [f32], fold: Fold) -> Result<bool> {
    match chosen() {
        Backend::Packed(t) => on_tile!(t, fold_with(a, b, w, acc, fold)),
        _ => Ok(false),
    }
}

fn fold_with<I: super::packed::Isa>(
    a: &Tensor,
    b: &Tensor,
    w: &[f32],
    acc: &mut [f32],
    fold: Fold,
) -> Result<bool> {
    let done = with_operands(a, b, |m, n, k, x, y| {
        anyhow::ensure!(
            w.len() == m * n && acc.len() == m * n,
            "fused product: [{m}, {n}] output against {} weights and {} sums",
            w.len(),
            acc.len()
        );
        // SAFETY: the tile's instruction set was detected (the backend is only chosen then);
        // the operands come from `with_operands`, `w` and `acc` hold m·n values.
        unsafe {
            super::packed::matmul_fold::<I>(
                m,
                n,
                k,
                packed_ops::view(x),
                packed_ops::view(y),
                w.as_ptr(),
                acc.as_mut_ptr(),
                fold,
            )
        };
        Ok(())
    })?;
    done.transpose().map(|d| d.is_some())
}

/// Batched `[B, H, m, k] · [B, H, k, n]` by `f` per (batch, head) pair as in `strided_mm`, the
/// pairs in parallel on the rayon pool or in turn.
fn strided_bmm(
    a: &Tensor,
    b: &Tensor,
    parallel: bool,
    f: impl Fn(usize, usize, usize, Operand, Operand, *mut f32) + Sync,
) -> Result<Option<Tensor>> {
    if !both_cpu_f32(a, b) {
        return Ok(None);
    }
    let (b0, h, m, k) = a.dims4()?;
    let (b1, h1, k2, n) = b.dims4()?;
    if (b0, h, k) != (b1, h1, k2) {
        anyhow::bail!("bmm shape mismatch: {:?} · {:?}", a.dims(), b.dims());
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some(va), Some(vb)) = (cpu_f32(&sa), cpu_f32(&sb)) else {
        return Ok(None);
    };
    // The inner 2-D layouts and the strides of the two leading axes.
    let inner = |l: &Layout| {
        let (d, s) = (l.dims(), l.stride());
        let sub = Layout::new(candle_core::Shape::from((d[2], d[3])), vec![s[2], s[3]], 0);
        strided_view(&sub).map(|v| (v, [s[0], s[1]]))
    };
    let (Some((sva, oa)), Some((svb, ob))) = (inner(la), inner(lb)) else {
        return Ok(None);
    };
    let mut c: Vec<f32> = Vec::with_capacity(b0 * h * m * n);
    if m > 0 && n > 0 {
        let out = c.as_mut_ptr() as usize;
        let one = |ij: usize| {
            let (i, j) = (ij / h, ij % h);
            let x = Operand::new(va, la.start_offset() + i * oa[0] + j * oa[1], sva);
            let y = Operand::new(vb, lb.start_offset() + i * ob[0] + j * ob[1], svb);
            // Block (i, j) of m·n outputs is this call's alone.
            f(m, n, k, x, y, (out as *mut f32).wrapping_add(ij * m * n));
        };
        if parallel {
            use rayon::prelude::*;
            (0..b0 * h).into_par_iter().for_each(one);
        } else {
            (0..b0 * h).for_each(one);
        }
        // SAFETY: every (i, j) block of m·n outputs was written.
        unsafe { c.set_len(b0 * h * m * n) };
    }
    drop((sa, sb));
    Ok(Some(Tensor::from_vec(c, (b0, h, m, n), a.device())?))
}

mod packed_ops {
    use super::super::packed::{matmul, matmul_single, Isa, View};
    use super::Operand;
    use anyhow::Result;
    use candle_core::Tensor;

    pub fn view(o: Operand) -> View {
        if o.transposed {
            View {
                ptr: o.ptr,
                rs: 1,
                cs: o.ld,
            }
        } else {
            View {
                ptr: o.ptr,
                rs: o.ld,
                cs: 1,
            }
        }
    }

    pub fn mm<I: Isa>(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
        // SAFETY: the instruction set was detected (the backend is only chosen then); the
        // operands and the output come from `strided_mm`.
        super::strided_mm(a, b, |m, n, k, x, y, c| unsafe {
            matmul::<I>(m, n, k, view(x), view(y), c)
        })
    }

    /// Small per-head products: one head per task, each single-threaded inside.
    pub fn bmm<I: Isa>(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
        // SAFETY: as above, from `strided_bmm`.
        super::strided_bmm(a, b, true, |m, n, k, x, y, c| unsafe {
            matmul_single::<I>(m, n, k, view(x), view(y), c)
        })
    }
}

#[cfg(any(feature = "openblas", feature = "mkl"))]
mod blas {
    use super::Operand;
    use anyhow::Result;
    use candle_core::Tensor;

    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;

    extern "C" {
        fn cblas_sgemm(
            order: i32,
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
    }

    #[cfg(feature = "mkl")]
    extern "C" {
        fn MKL_Set_Num_Threads(n: i32);
    }
    #[cfg(all(feature = "openblas", not(feature = "mkl")))]
    extern "C" {
        fn openblas_set_num_threads(n: i32);
    }

    pub fn set_threads(n: usize) {
        // SAFETY: plain FFI calls with a positive thread count.
        #[cfg(feature = "mkl")]
        unsafe {
            MKL_Set_Num_Threads(n as i32)
        }
        #[cfg(all(feature = "openblas", not(feature = "mkl")))]
        unsafe {
            openblas_set_num_threads(n as i32)
        }
    }

    /// One row-major `c = a · b` (beta = 0) into `c`, which must have room for m·n values.
    ///
    /// # Safety
    /// `a` and `b` must point at views of the given sizes and leading dimensions.
    unsafe fn sgemm(m: usize, n: usize, k: usize, a: Operand, b: Operand, c: *mut f32) {
        let t = |o: &Operand| if o.transposed { TRANS } else { NO_TRANS };
        cblas_sgemm(
            ROW_MAJOR,
            t(&a),
            t(&b),
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.ptr,
            a.ld.max(1) as i32,
            b.ptr,
            b.ld.max(1) as i32,
            0.0,
            c,
            n.max(1) as i32,
        );
    }

    pub fn mm(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
        // SAFETY: the operands and the output come from `strided_mm`.
        super::strided_mm(a, b, |m, n, k, x, y, c| unsafe { sgemm(m, n, k, x, y, c) })
    }

    /// One sgemm per leading index pair, in turn (the library threads each one).
    pub fn bmm(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
        // SAFETY: as above, from `strided_bmm`.
        super::strided_bmm(a, b, false, |m, n, k, x, y, c| unsafe {
            sgemm(m, n, k, x, y, c)
        })
    }
}
