//! The per-cell ranking: genes by descending normalised value, ties by ascending first source column,
//! through a two-pass radix sort on the value's bits.

use super::tokenizer::{CellTables, UNMAPPED};
use super::*;

/// Counts below this get their `count / n_counts * TARGET_SUM` from a per-cell table (one division per
/// distinct count instead of one per gene; the same operations, so the same values).
const SCALED_TABLE: usize = 64;

/// The per-worker state of the ranking loop: the genes of one cell with their sort keys, and the buffers of
/// the sort, reused from cell to cell.
pub(super) struct CellRanker {
    /// `!x.to_bits()` of each gene to rank: ascending keys are descending `x` (for positive finite f64 the
    /// IEEE bit pattern increases with the value).
    pub(super) keys: Vec<u64>,
    /// The local target index of each key.
    pub(super) locals: Vec<u32>,
    /// Whether `locals` is strictly ascending (then a stable sort by key alone applies the tie rule).
    pub(super) ascending: bool,
    /// The smallest and largest key.
    pub(super) range: (u64, u64),
    /// The radix sort's buffers: (leading key bits << 32) | position, and the digit counts.
    pub(super) packed: Vec<u64>,
    pub(super) scratch: Vec<u64>,
    pub(super) counts: Vec<u32>,
    /// The result of [`Self::rank`].
    pub(super) sorted_locals: Vec<u32>,
    /// Keys with their local index, for the general sort and for large buckets.
    pub(super) wide: Vec<u128>,
    /// Summed counts per local target (used when columns are collapsed).
    pub(super) acc: Vec<f64>,
    pub(super) touched: Vec<u32>,
    /// `count / n_counts * TARGET_SUM` of the cell by integer count.
    pub(super) scaled: [f64; SCALED_TABLE],
}

impl CellRanker {
    pub(super) fn new(n_targets: usize) -> Self {
        CellRanker {
            keys: Vec::new(),
            locals: Vec::new(),
            ascending: true,
            range: (u64::MAX, 0),
            packed: Vec::new(),
            scratch: Vec::new(),
            counts: Vec::new(),
            sorted_locals: Vec::new(),
            wide: Vec::new(),
            acc: vec![0.0; n_targets],
            touched: Vec::new(),
            scaled: [0.0; SCALED_TABLE],
        }
    }

    /// Normalises the stored values of one cell and keeps the genes with `x > 0`. Returns false when some
    /// `x` is NaN or infinite (an `n_counts` that is not positive).
    pub(super) fn collect(&mut self, tables: &CellTables, cols: &[u32], vals: &[f32], n_counts: f64) -> bool {
        for (count, slot) in self.scaled.iter_mut().enumerate() {
            *slot = count as f64 / n_counts * TARGET_SUM;
        }
        let scaled = &self.scaled;
        let (keys, locals) = (&mut self.keys, &mut self.locals);
        keys.clear();
        locals.clear();
        keys.reserve(cols.len());
        locals.reserve(cols.len());
        let (mut bad, mut ascending, mut last) = (false, true, -1i64);
        let (mut min, mut max) = (u64::MAX, 0u64);
        // One gene of the cell with its (summed) count; kept when x > 0.
        macro_rules! consider {
            ($count:expr, $l:expr) => {{
                let (count, l): (f64, u32) = ($count, $l);
                if count > 0.0 {
                    let small = count as usize;
                    let scaled = if small < SCALED_TABLE && small as f64 == count {
                        scaled[small]
                    } else {
                        count / n_counts * TARGET_SUM
                    };
                    let x = scaled / tables.median[l as usize];
                    if !x.is_finite() {
                        bad = true;
                    } else if x > 0.0 {
                        let key = !x.to_bits();
                        keys.push(key);
                        locals.push(l);
                        min = min.min(key);
                        max = max.max(key);
                        ascending &= i64::from(l) > last;
                        last = i64::from(l);
                    }
                }
            }};
        }
        if tables.injective {
            // Each mapped column is its own gene: rank the stored values directly.
            for (&g, &v) in cols.iter().zip(vals) {
                let l = tables.col_local[g as usize];
                if l != UNMAPPED {
                    consider!(v as f64, l);
                }
            }
        } else {
            // Sum the columns of each gene first, then take the genes in ascending local order.
            let (acc, touched) = (&mut self.acc, &mut self.touched);
            touched.clear();
            for (&g, &v) in cols.iter().zip(vals) {
                let l = tables.col_local[g as usize];
                if l != UNMAPPED {
                    if acc[l as usize] == 0.0 {
                        touched.push(l);
                    }
                    acc[l as usize] += v as f64;
                }
            }
            touched.sort_unstable();
            for &l in touched.iter() {
                consider!(std::mem::replace(&mut acc[l as usize], 0.0), l);
            }
        }
        self.ascending = ascending;
        self.range = (min, max);
        !bad
    }

    /// The local indices of the collected genes in rank order (descending `x`, ties by ascending local
    /// index, which follows the first source column), the first `keep` of them.
    ///
    /// A least-significant-digit radix sort (two stable passes of [`DIGIT_BITS`] bits) of each key's
    /// leading bits over the cell's range, packed with the gene's position; genes are collected in
    /// ascending local order, so equal leading bits keep that order. Runs of equal leading bits (exact ties,
    /// and near ties at the resolution of the truncation) are then sorted by their whole keys.
    pub(super) fn rank(&mut self, keep: usize) -> &[u32] {
        let n = self.keys.len();
        let need = n.min(keep);
        self.sorted_locals.clear();
        if n == 0 {
            return &self.sorted_locals;
        }
        if !self.ascending || n > u32::MAX as usize {
            // Not in local order (a matrix whose columns are not ascending): sort (key, local) pairs.
            self.wide.clear();
            self.wide.extend(
                self.keys
                    .iter()
                    .zip(&self.locals)
                    .map(|(&k, &l)| (u128::from(k) << 32) | u128::from(l)),
            );
            self.wide.sort_unstable();
            self.sorted_locals
                .extend(self.wide[..need].iter().map(|&w| w as u32));
            return &self.sorted_locals;
        }
        let (keys, locals) = (&self.keys, &self.locals);
        let (min, max) = self.range;
        let span_bits = u64::BITS - (max - min).leading_zeros();
        let shift = span_bits.saturating_sub(2 * DIGIT_BITS);
        const RADIX: usize = 1 << DIGIT_BITS;
        const MASK: u64 = RADIX as u64 - 1;
        // (leading bits << 32) | position.
        self.packed.clear();
        self.packed.resize(n, 0);
        self.scratch.clear();
        self.scratch.resize(n, 0);
        self.counts.clear();
        self.counts.resize(2 * RADIX, 0);
        let (low, high) = self.counts.split_at_mut(RADIX);
        for (i, (slot, &k)) in self.packed.iter_mut().zip(keys).enumerate() {
            let t = (k - min) >> shift;
            low[(t & MASK) as usize] += 1;
            high[(t >> DIGIT_BITS) as usize] += 1;
            *slot = (t << 32) | i as u64;
        }
        let prefix = |h: &mut [u32]| {
            let mut sum = 0;
            for c in h.iter_mut() {
                let here = *c;
                *c = sum;
                sum += here;
            }
        };
        prefix(low);
        prefix(high);
        for &p in self.packed.iter() {
            let slot = &mut low[((p >> 32) & MASK) as usize];
            self.scratch[*slot as usize] = p;
            *slot += 1;
        }
        for &p in self.scratch.iter() {
            let slot = &mut high[(p >> (32 + DIGIT_BITS)) as usize];
            self.packed[*slot as usize] = p;
            *slot += 1;
        }
        // Runs of equal leading bits, by whole key; a run stays in ascending position (= local) order.
        let sorted = &mut self.packed;
        let mut i = 1;
        while i < n && i <= need {
            if sorted[i] >> 32 != sorted[i - 1] >> 32 {
                i += 1;
                continue;
            }
            let start = i - 1;
            let mut end = i + 1;
            while end < n && sorted[end] >> 32 == sorted[start] >> 32 {
                end += 1;
            }
            let run = &mut sorted[start..end];
            if run.len() <= SMALL_SORT {
                // Stable insertion sort by whole key.
                for j in 1..run.len() {
                    let p = run[j];
                    let k = keys[p as u32 as usize];
                    let mut at = j;
                    while at > 0 && keys[run[at - 1] as u32 as usize] > k {
                        run[at] = run[at - 1];
                        at -= 1;
                    }
                    run[at] = p;
                }
            } else {
                self.wide.clear();
                self.wide.extend(
                    run.iter()
                        .map(|&p| (u128::from(keys[p as u32 as usize]) << 32) | u128::from(p as u32)),
                );
                self.wide.sort_unstable();
                for (slot, &w) in run.iter_mut().zip(&self.wide) {
                    *slot = w as u32 as u64;
                }
            }
            i = end + 1;
        }
        self.sorted_locals
            .extend(sorted[..need].iter().map(|&p| locals[p as u32 as usize]));
        &self.sorted_locals
    }
}

/// Bits of each of the two radix passes of [`CellRanker::rank`].
const DIGIT_BITS: u32 = 11;

/// Runs of equal leading bits up to this size are sorted by insertion.
const SMALL_SORT: usize = 32;
