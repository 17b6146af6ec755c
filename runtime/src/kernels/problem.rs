//! A validated GEMM on raw output memory ([`Problem`]) and the per-thread packing buffers of
//! the SIMD GEMM driver ([`Scratch`]).

use super::backend::Backend;
use super::driver;
use super::types::{fits, BLayout, Gemm, MatB};

fn check_gemm(g: &Gemm<'_, '_>) {
    let k = g.b.k;
    let n = g.b.n;
    assert!(g.b.is_valid(), "B operand too small for its shape");
    if g.m > 0 && k > 0 {
        assert!(fits(g.m, g.lda, k, g.a.len()), "A operand too small");
    }
    if g.m > 0 && n > 0 {
        assert!(fits(g.m, g.ldc, n, g.c.len()), "C operand too small");
    }
    if let Some(b) = g.epilogue.bias {
        assert!(b.len() >= n, "bias too short");
    }
    if let Some(s) = g.epilogue.scale {
        assert!(s.len() >= n, "scale too short");
    }
}

/// A validated GEMM on raw output memory: the whole of a [`Gemm`] or a block of rows or
/// columns of one (what one thread computes).
///
/// Invariants (established by [`Problem::new`] and kept by the unsafe sub-block methods):
/// `a` holds rows `0..m` of `k` elements at stride `lda`; `b` holds logical columns
/// `j0..j0 + n`; `bias`/`scale` are sliced to exactly the problem's `n` columns; `c` is valid
/// for reads and writes of the `m × n` rectangle at stride `ldc`, and nothing else accesses that
/// rectangle while the problem is alive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Problem<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: &'a [f32],
    pub lda: usize,
    pub b: MatB<'a>,
    /// First logical column of `b` that this problem computes.
    pub j0: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: Option<&'a [f32]>,
    pub scale: Option<&'a [f32]>,
    pub gelu: bool,
    pub accumulate: bool,
    /// Use the matrix-vector path (chosen from the shape of the whole GEMM, so that every
    /// thread of a split computes its outputs with the same operation sequence).
    #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
    pub gemv: bool,
}

// SAFETY: a `Problem` is only shared between threads by `gemm_parallel`, which gives each thread
// a disjoint block of the output rectangle (see `Problem::cols` / `Problem::rows`); everything
// else it holds is shared immutable data.
unsafe impl Send for Problem<'_> {}
// SAFETY: as above; `&Problem` only exposes the raw pointer, writes through it are governed by
// the disjointness contract of the sub-block methods.
unsafe impl Sync for Problem<'_> {}

impl<'a> Problem<'a> {
    /// Validates `g` (panicking on a caller bug) and takes its output rectangle.
    pub(crate) fn new(g: &'a mut Gemm<'_, '_>) -> Problem<'a> {
        check_gemm(g);
        let n = g.b.n;
        Problem {
            m: g.m,
            n,
            k: g.b.k,
            a: g.a,
            lda: g.lda,
            b: g.b,
            j0: 0,
            c: g.c.as_mut_ptr(),
            ldc: g.ldc,
            bias: g.epilogue.bias.map(|b| &b[..n]),
            scale: g.epilogue.scale.map(|s| &s[..n]),
            gelu: g.epilogue.gelu,
            accumulate: g.epilogue.accumulate,
            gemv: g.m == 1 && g.b.layout == BLayout::NK,
        }
    }

    /// The sub-problem computing columns `r` (relative to this problem).
    ///
    /// # Safety
    /// Sub-problems used at the same time must have disjoint column ranges, and `self` must not
    /// be used to access C while they are alive.
    pub(crate) unsafe fn cols(&self, r: core::ops::Range<usize>) -> Problem<'a> {
        assert!(r.start <= r.end && r.end <= self.n);
        Problem {
            n: r.len(),
            j0: self.j0 + r.start,
            c: self.c.wrapping_add(r.start),
            bias: self.bias.map(|b| &b[r.clone()]),
            scale: self.scale.map(|s| &s[r.clone()]),
            ..*self
        }
    }

    /// The sub-problem computing rows `r` (relative to this problem).
    ///
    /// # Safety
    /// As for [`Problem::cols`], with rows.
    pub(crate) unsafe fn rows(&self, r: core::ops::Range<usize>) -> Problem<'a> {
        assert!(r.start <= r.end && r.end <= self.m);
        let a = if r.is_empty() || self.k == 0 { &self.a[..0] } else { &self.a[r.start * self.lda..] };
        Problem { m: r.len(), a, c: self.c.wrapping_add(r.start * self.ldc), ..*self }
    }
}

/// Per-thread scratch memory of the kernels (packing buffers). Allocated once per session.
///
/// For the SIMD backends it holds one packed `KC × NR` panel of `B` (16 KiB) and a partial-sum
/// block (`MC × NC` floats, about 270 KiB, used only by accumulating GEMMs with `k > KC`). The
/// scalar backend needs no packing: its scratch is empty (the Cortex-M budget is 64 KiB).
#[derive(Debug)]
pub struct Scratch {
    backend: Backend,
    /// Packed B panel (with slack to align it to 64 bytes).
    pack: alloc::vec::Vec<f32>,
    /// Partial sums of one `MC × NC` output block.
    part: alloc::vec::Vec<f32>,
}

impl Scratch {
    /// Scratch sized for `backend`.
    pub fn new(backend: Backend) -> Scratch {
        let (pack, part) = Scratch::floats(backend);
        Scratch { backend, pack: alloc::vec![0.0; pack], part: alloc::vec![0.0; part] }
    }
    /// Bytes a scratch for `backend` holds (known before allocating it).
    pub fn bytes_for(backend: Backend) -> usize {
        let (pack, part) = Scratch::floats(backend);
        (pack + part) * 4
    }
    fn floats(backend: Backend) -> (usize, usize) {
        match backend {
            Backend::Scalar => (0, 0),
            Backend::Avx2 | Backend::Neon => (driver::PACK_FLOATS + 16, driver::PART_FLOATS),
            // A 32-column panel (see `avx512.rs`).
            Backend::Avx512 => (2 * driver::PACK_FLOATS + 16, driver::PART_FLOATS),
        }
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.pack.capacity() + self.part.capacity()) * 4
    }
    /// The backend this scratch was sized for.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The packing buffers, if this scratch is large enough for the SIMD GEMM driver.
    pub(crate) fn simd_buffers(&mut self) -> Option<(&mut [f32], &mut [f32])> {
        self.simd_buffers_of(driver::PACK_FLOATS)
    }
    /// As [`Scratch::simd_buffers`] with a packed panel of `pack` floats.
    pub(crate) fn simd_buffers_of(&mut self, pack: usize) -> Option<(&mut [f32], &mut [f32])> {
        if self.pack.len() < pack + 16 || self.part.len() < driver::PART_FLOATS {
            return None;
        }
        // Align the packed panel to 64 bytes (a cache line) so that each 16-float row of the
        // panel is one line.
        let off = self.pack.as_ptr().align_offset(64).min(16);
        Some((&mut self.pack[off..off + pack], &mut self.part[..]))
    }
}
