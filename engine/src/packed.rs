//! Packed variable-length batches: cells concatenated end to end with offsets (no padding).

use crate::error::EngineError;

/// A batch of cells packed into one token axis. Cell `c` owns packed rows
/// `offsets[c]..offsets[c + 1]`; position `p` of cell `c` is row `offsets[c] + p`.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBatch {
    tokens: Vec<u32>,
    /// Per-token input values (scGPT's expression bins); `None` for models that read only tokens.
    values: Option<Vec<f32>>,
    offsets: Vec<usize>,
}

impl PackedBatch {
    /// Packs cells given as token lists. Every cell must have at least one token.
    pub fn from_cells<C: AsRef<[u32]>>(cells: &[C]) -> Result<Self, EngineError> {
        let mut tokens = Vec::with_capacity(cells.iter().map(|c| c.as_ref().len()).sum());
        let mut offsets = Vec::with_capacity(cells.len() + 1);
        offsets.push(0);
        for (i, cell) in cells.iter().enumerate() {
            let cell = cell.as_ref();
            if cell.is_empty() {
                return Err(EngineError::InvalidBatch(format!("cell {i} has no tokens")));
            }
            tokens.extend_from_slice(cell);
            offsets.push(tokens.len());
        }
        Ok(PackedBatch {
            tokens,
            values: None,
            offsets,
        })
    }

    /// Attaches per-token values (same packing as the tokens).
    pub fn with_values(mut self, values: Vec<f32>) -> Result<Self, EngineError> {
        if values.len() != self.tokens.len() {
            return Err(EngineError::InvalidBatch(format!(
                "{} values for {} tokens",
                values.len(),
                self.tokens.len()
            )));
        }
        self.values = Some(values);
        Ok(self)
    }

    pub fn n_cells(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn values(&self) -> Option<&[f32]> {
        self.values.as_deref()
    }

    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    pub fn cell_range(&self, cell: usize) -> std::ops::Range<usize> {
        self.offsets[cell]..self.offsets[cell + 1]
    }

    pub fn cell_len(&self, cell: usize) -> usize {
        self.offsets[cell + 1] - self.offsets[cell]
    }

    pub fn max_len(&self) -> usize {
        (0..self.n_cells()).map(|c| self.cell_len(c)).max().unwrap_or(0)
    }

    /// Packed row of `(cell, position)`.
    pub fn row(&self, cell: usize, position: usize) -> usize {
        self.offsets[cell] + position
    }

    /// Position within its cell of every packed row (positions restart at 0 in each cell).
    pub fn positions(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.tokens.len());
        for c in 0..self.n_cells() {
            out.extend(0..self.cell_len(c));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_ragged_cells_without_padding() {
        let b = PackedBatch::from_cells(&[vec![5u32, 6, 7], vec![8], vec![9, 10]]).unwrap();
        assert_eq!(b.n_tokens(), 6);
        assert_eq!(b.offsets(), &[0, 3, 4, 6]);
        assert_eq!(b.row(2, 1), 5);
        assert_eq!(b.positions(), vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(b.max_len(), 3);
    }

    #[test]
    fn rejects_empty_cells_and_mismatched_values() {
        assert!(PackedBatch::from_cells(&[vec![1u32], vec![]]).is_err());
        let b = PackedBatch::from_cells(&[vec![1u32, 2]]).unwrap();
        assert!(b.clone().with_values(vec![1.0]).is_err());
        assert!(b.with_values(vec![1.0, 2.0]).is_ok());
    }
}
