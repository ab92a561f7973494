//! 2-D matrix products for the linear layers and the relevance pass.
//!
//! f32 products on the CPU go, in order of preference, to our packed kernel with the AVX-512
//! tile (`packed.rs`, `avx512.rs`), to `cblas_sgemm` of the `openblas` or `mkl` cargo feature,
//! or to candle's matmul (the `gemm` crate, whose AVX2 kernels a plain AVX2 tile of ours did
//! not beat). Operands may be contiguous or transposed views, never copied.
//! `SPARC3_GEMM=candle|blas|avx512` forces one backend (for benchmarks).

use anyhow::Result;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use std::sync::OnceLock;

pub use super::packed::Fold;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Avx512,
    Blas,
    Candle,
}

fn chosen() -> Backend {
    static B: OnceLock<Backend> = OnceLock::new();
    *B.get_or_init(|| {
        let blas = cfg!(any(feature = "openblas", feature = "mkl"));
        #[cfg(target_arch = "x86_64")]
        let avx512 = {
            use super::packed::Isa;
            super::avx512::Avx512::available()
        };
        #[cfg(not(target_arch = "x86_64"))]
        let avx512 = false;
        match std::env::var("SPARC3_GEMM").as_deref() {
            Ok("candle") => Backend::Candle,
            Ok("blas") if blas => Backend::Blas,
            Ok("avx512") if avx512 => Backend::Avx512,
            _ if avx512 => Backend::Avx512,
            _ if blas => Backend::Blas,
            _ => Backend::Candle,
        }
    })
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
    let fast = match chosen() {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 if batched => avx::bmm::<super::avx512::Avx512>(a, b)?,
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => avx::mm::<super::avx512::Avx512>(a, b)?,
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

/// Number of threads the BLAS backend uses (no-op without the `openblas` feature; the AVX-512
/// kernel runs on the rayon pool).
pub fn set_threads(n: usize) {
    #[cfg(any(feature = "openblas", feature = "mkl"))]
    blas::set_threads(n);
    #[cfg(not(any(feature = "openblas", feature = "mkl")))]
    let _ = n;
}

pub fn backend() -> &'static str {
    match chosen() {
        Backend::Avx512 => "avx512",
        Backend::Blas if cfg!(feature = "mkl") => "mkl",
        Backend::Blas => "openblas",
        Backend::Candle => "candle-gemm",
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
#[allow(dead_code)] // without a fast backend (not x86-64, no BLAS feature)
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
#[allow(dead_code)] // without a fast backend (not x86-64, no BLAS feature)
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
/// `[m, n]`), where the chosen backend can fuse it: the AVX-512 kernel with f32 CPU operands.
/// Returns false, having done nothing, elsewhere.
pub fn mm_fold(a: &Tensor, b: &Tensor, w: &[f32], acc: &mut [f32], fold: Fold) -> Result<bool> {
    #[cfg(target_arch = "x86_64")]
    if chosen() == Backend::Avx512 {
        use super::avx512::Avx512;
        use super::packed::matmul_fold;
        let done = with_operands(a, b, |m, n, k, x, y| {
            anyhow::ensure!(
                w.len() == m * n && acc.len() == m * n,
                "fused product: [{m}, {n}] output against {} weights and {} sums",
                w.len(),
                acc.len()
            );
            // SAFETY: AVX-512 was detected (the backend is only chosen then); the operands
            // come from `with_operands`, `w` and `acc` hold m·n values.
            unsafe {
                matmul_fold::<Avx512>(
                    m,
                    n,
                    k,
                    avx::view(x),
                    avx::view(y),
                    w.as_ptr(),
                    acc.as_mut_ptr(),
                    fold,
                )
            };
            Ok(())
        })?;
        return done.transpose().map(|d| d.is_some());
    }
    let _ = (a, b, w, acc, fold);
    Ok(false)
}

/// Batched `[B, H, m, k] · [B, H, k, n]` by `f` per (batch, head) pair as in `strided_mm`, the
/// pairs in parallel on the rayon pool or in turn.
#[allow(dead_code)] // without a fast backend (not x86-64, no BLAS feature)
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

#[cfg(target_arch = "x86_64")]
mod avx {
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
