//! The operands of the kernels: weight storage, the `B` operand of a GEMM and its epilogue,
//! CSR matrices and strided row-major views of f32 activations.

use half::{bf16, f16};

/// Element storage of a weight operand.
#[derive(Clone, Copy, Debug)]
pub enum WeightSlice<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE half precision.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
    /// Signed 8-bit integers with one f32 scale per output channel (see [`QuantI8`]).
    I8(QuantI8<'a>),
}

/// Int8 weights: element `i` of output channel `c` stands for `values[i] · scales[c]`.
///
/// The channel of an element is the output it contributes to: row `j` of a weight `[n, k]`
/// (the GEMM's output column `j`, in either [`BLayout`]), row `j` of a CSR matrix. Without
/// `scales` the values are used as they are (a unit scale; the low-rank `U` whose per-column
/// scales were folded into `V`'s row scales, `docs/FORMAT.md`).
#[derive(Clone, Copy, Debug)]
pub struct QuantI8<'a> {
    /// The quantised values.
    pub values: &'a [i8],
    /// One scale per output channel, or `None` for a unit scale.
    pub scales: Option<&'a [f32]>,
}

impl QuantI8<'_> {
    /// The scale of output channel `channel` (1 without scales).
    #[inline(always)]
    pub fn scale(&self, channel: usize) -> f32 {
        self.scales.map_or(1.0, |s| s[channel])
    }
}

impl WeightSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            WeightSlice::F32(s) => s.len(),
            WeightSlice::F16(s) => s.len(),
            WeightSlice::BF16(s) => s.len(),
            WeightSlice::I8(q) => q.values.len(),
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32 (slow path for references and tests). For [`WeightSlice::I8`] this
    /// is the unscaled integer: use [`WeightSlice::value`] for the weight it stands for.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            WeightSlice::F32(s) => s[i],
            WeightSlice::F16(s) => s[i].to_f32(),
            WeightSlice::BF16(s) => s[i].to_f32(),
            WeightSlice::I8(q) => f32::from(q.values[i]),
        }
    }
    /// Element `i`, which belongs to output channel `channel`, as the f32 weight it stands for
    /// (the channel only matters for [`WeightSlice::I8`], whose scale it selects).
    pub fn value(&self, i: usize, channel: usize) -> f32 {
        match self {
            WeightSlice::I8(q) => f32::from(q.values[i]) * q.scale(channel),
            _ => self.get(i),
        }
    }
    /// Whether the scales (if any) cover `channels` output channels.
    pub fn covers_channels(&self, channels: usize) -> bool {
        match self {
            WeightSlice::I8(QuantI8 { scales: Some(s), .. }) => s.len() >= channels,
            _ => true,
        }
    }
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            WeightSlice::F32(_) => 4,
            WeightSlice::F16(_) | WeightSlice::BF16(_) => 2,
            WeightSlice::I8(_) => 1,
        }
    }
}

/// How the `B` operand is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BLayout {
    /// Logical element `(p, j)` (row p of k, column j of n) is at `j * ld + p`: a weight `[n, k]`.
    NK,
    /// Logical element `(p, j)` is at `p * ld + j`: a plain `[k, n]` matrix.
    KN,
}

/// The `B` operand of a GEMM: a logical `k × n` matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatB<'a> {
    /// Elements.
    pub data: WeightSlice<'a>,
    /// Reduction dimension.
    pub k: usize,
    /// Output columns.
    pub n: usize,
    /// Memory layout.
    pub layout: BLayout,
    /// Leading dimension in elements (≥ k for NK, ≥ n for KN).
    pub ld: usize,
}

impl<'a> MatB<'a> {
    /// A PyTorch-style weight `[n, k]`, densely stored.
    pub fn weight(data: WeightSlice<'a>, n: usize, k: usize) -> MatB<'a> {
        MatB { data, k, n, layout: BLayout::NK, ld: k }
    }
    /// Logical element `(p, j)` as f32 (int8 values times the scale of output channel `j`).
    pub fn at(&self, p: usize, j: usize) -> f32 {
        match self.layout {
            BLayout::NK => self.data.value(j * self.ld + p, j),
            BLayout::KN => self.data.value(p * self.ld + j, j),
        }
    }
    /// Whether `data` (and, for int8, its scales: one per output column) is large enough for
    /// the declared shape and stride.
    pub fn is_valid(&self) -> bool {
        if self.k == 0 || self.n == 0 {
            return true;
        }
        if !self.data.covers_channels(self.n) {
            return false;
        }
        let (rows, cols) = match self.layout {
            BLayout::NK => (self.n, self.k),
            BLayout::KN => (self.k, self.n),
        };
        self.ld >= cols
            && (rows - 1)
                .checked_mul(self.ld)
                .and_then(|x| x.checked_add(cols))
                .is_some_and(|need| need <= self.data.len())
    }
}

/// What happens to each computed value `v = (A·B)[i][j]` before it lands in `C`.
///
/// Order: `v += bias[j]`; if `gelu`, `v = gelu(v)`; then `C[i][j] = v`, or, when
/// `accumulate`, `C[i][j] += scale[j] * v` (`scale` absent means 1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Per-column bias (length n).
    pub bias: Option<&'a [f32]>,
    /// Apply exact (erf) GELU.
    pub gelu: bool,
    /// Add into C instead of overwriting it.
    pub accumulate: bool,
    /// Per-column scale applied to the value before accumulation (LayerScale); only used with
    /// `accumulate`.
    pub scale: Option<&'a [f32]>,
}

/// One GEMM problem: `C[m×n] (ldc) ⊕= epilogue(A[m×k] (lda) · B)`.
#[derive(Debug)]
pub struct Gemm<'a, 'c> {
    /// Rows of A and C.
    pub m: usize,
    /// A operand, f32 row-major with stride `lda`.
    pub a: &'a [f32],
    /// Row stride of A.
    pub lda: usize,
    /// B operand.
    pub b: MatB<'a>,
    /// C operand, f32 row-major with stride `ldc`.
    pub c: &'c mut [f32],
    /// Row stride of C.
    pub ldc: usize,
    /// Bias, activation, accumulation.
    pub epilogue: Epilogue<'a>,
}

/// Column indices of a CSR matrix.
#[derive(Clone, Copy, Debug)]
pub enum SparseIndices<'a> {
    /// 16-bit indices (used when n ≤ 65536).
    U16(&'a [u16]),
    /// 32-bit indices.
    U32(&'a [u32]),
}

impl SparseIndices<'_> {
    /// Index `i` as usize.
    pub fn get(&self, i: usize) -> usize {
        match self {
            SparseIndices::U16(s) => s[i] as usize,
            SparseIndices::U32(s) => s[i] as usize,
        }
    }
    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            SparseIndices::U16(s) => s.len(),
            SparseIndices::U32(s) => s.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// One more than the largest index (0 when empty): the smallest `n` the indices fit.
    pub fn min_cols(&self) -> usize {
        match self {
            SparseIndices::U16(s) => s.iter().copied().max().map_or(0, |v| v as usize + 1),
            SparseIndices::U32(s) => s.iter().copied().max().map_or(0, |v| v as usize + 1),
        }
    }
}

/// A CSR matrix `S` (`rows × n`, one row per output) with f32/f16/bf16 values, or int8 values
/// with one scale per row.
///
/// `rows = row_ptr.len() - 1`; `n` is taken as one more than the largest column index. The
/// kernels expect validated slices (the session checks them when the model is loaded);
/// inconsistent ones panic, never cause undefined behaviour.
#[derive(Clone, Copy, Debug)]
pub struct Csr<'a> {
    /// Row `j` holds entries `row_ptr[j]..row_ptr[j + 1]`.
    pub row_ptr: &'a [u32],
    /// Column index of each entry.
    pub col_idx: SparseIndices<'a>,
    /// Value of each entry.
    pub values: WeightSlice<'a>,
}

impl Csr<'_> {
    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        self.row_ptr.len().saturating_sub(1)
    }
}

/// The shape accessors of [`Rows`] and [`RowsMut`].
macro_rules! shape_accessors {
    () => {
        /// Number of rows.
        pub fn rows(&self) -> usize {
            self.rows
        }
        /// Values per row.
        pub fn cols(&self) -> usize {
            self.cols
        }
        /// Row stride in elements.
        pub fn ld(&self) -> usize {
            self.ld
        }
    };
}

/// A read-only row-major block of `rows × cols` f32 values at row stride `ld` (elements).
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
}

impl<'a> Rows<'a> {
    /// Rows `0..rows` of `cols` values each, row `r` starting at `data[r * ld]`.
    ///
    /// # Panics
    /// If `ld < cols` (with a non-empty block) or `data` is too short for the block.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Rows<'a> {
        assert!(fits(rows, ld, cols, data.len()), "Rows: data too small for {rows} × {cols} at stride {ld}");
        Rows { data, rows, cols, ld }
    }
    shape_accessors!();
    /// The `cols` values of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.ld..r * self.ld + self.cols]
    }
}

/// A mutable row-major block of `rows × cols` f32 values at row stride `ld` (elements); the
/// elements between rows are never written.
#[derive(Debug)]
pub struct RowsMut<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
}

impl<'a> RowsMut<'a> {
    /// Rows `0..rows` of `cols` values each, row `r` starting at `data[r * ld]`.
    ///
    /// # Panics
    /// If `ld < cols` (with a non-empty block) or `data` is too short for the block.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> RowsMut<'a> {
        assert!(fits(rows, ld, cols, data.len()), "RowsMut: data too small for {rows} × {cols} at stride {ld}");
        RowsMut { data, rows, cols, ld }
    }
    shape_accessors!();
    /// The `cols` values of row `r`.
    #[inline]
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.ld..r * self.ld + self.cols]
    }
}

/// Whether a row-major block of `rows × cols` at stride `ld` fits in `len` elements (with
/// overflow-checked arithmetic: a wrapped product must never pass a bounds check that unsafe
/// code relies on).
pub(crate) fn fits(rows: usize, ld: usize, cols: usize, len: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    ld >= cols && (rows - 1).checked_mul(ld).and_then(|x| x.checked_add(cols)).is_some_and(|need| need <= len)
}
