//! Launch wrapper of `embed_bert.cu` (CPU reference: Geneformer's `Encoder::embed` before its LayerNorm).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{check_len, GpuError, Kernels};

/// BERT embedding tables on the device (`d` columns each).
pub struct DeviceBertTables {
    pub word: CudaSlice<f32>,
    pub position: CudaSlice<f32>,
    pub token_type: CudaSlice<f32>,
    pub d: usize,
}

impl Kernels {
    /// `out[r] = (word[tokens[r]] + token_type) + position[positions[r]]` for every row. Token ids and
    /// positions must be within the tables: checked here against their row counts, on the host copies
    /// the caller passes (`tokens_host`, `positions_host`), so that no launch reads out of bounds.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_bert_gather(
        &self,
        stream: &Arc<CudaStream>,
        (tokens, tokens_host): (&CudaSlice<u32>, &[u32]),
        (positions, positions_host): (&CudaSlice<u32>, &[u32]),
        tables: &DeviceBertTables,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        const ENTRY: &str = "embed_bert_gather_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: ENTRY,
            reason,
        };
        let (rows, d) = (tokens_host.len(), tables.d);
        if positions_host.len() != rows || tokens.len() < rows || positions.len() < rows {
            return Err(bad(format!(
                "{rows} tokens but {} positions (device {} / {})",
                positions_host.len(),
                tokens.len(),
                positions.len()
            )));
        }
        if d == 0 || rows == 0 {
            return Ok(());
        }
        let vocab = tables.word.len() / d;
        let max_pos = tables.position.len() / d;
        if let Some(t) = tokens_host.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad(format!("token id {t} outside the vocabulary of {vocab}")));
        }
        if let Some(p) = positions_host.iter().find(|&&p| p as usize >= max_pos) {
            return Err(bad(format!(
                "position {p} outside the {max_pos} position embeddings"
            )));
        }
        check_len("token_type", tables.token_type.len(), d).map_err(|e| bad(e.to_string()))?;
        check_len("out", out.len(), rows * d).map_err(|e| bad(e.to_string()))?;
        let rows_i = i32::try_from(rows).map_err(|_| bad(format!("{rows} rows exceed i32")))?;
        let d_i = i32::try_from(d).map_err(|_| bad(format!("d = {d} exceeds i32")))?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: ((d.div_ceil(32).clamp(1, 8) * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function(ENTRY)?);
        launch
            .arg(tokens)
            .arg(positions)
            .arg(&tables.word)
            .arg(&tables.position)
            .arg(&tables.token_type)
            .arg(out)
            .arg(&rows_i)
            .arg(&d_i);
        // SAFETY: argument types and order match the kernel; ids and positions checked against the tables.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
