//! `scinterp apply`: a tool on new cells. Panel genes are matched by Ensembl id or symbol, counts become
//! log1p-CP10k, and the tool runs folded (`latent = x·G + b`, G = the operator chain times the adaptor,
//! `[N, d]`) over each cell's non-zero panel genes only; the readouts follow. The calls go to a TSV
//! written under a temporary name and renamed when complete.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use scinterp_models::cells::CountMatrix;

use crate::cells::{self, CellInput};
use crate::error::ExportError;
use crate::files::read_tool;

/// Cells read from the file at a time, and cells formatted by one task.
const BLOCK_CELLS: usize = 8_192;
const CHUNK_CELLS: usize = 1_024;

/// What to apply to which cells.
#[derive(Clone, Debug)]
pub struct ApplyConfig {
    pub tool: PathBuf,
    pub cells: CellInput,
    pub out: PathBuf,
    /// Refuse the cells when fewer than this fraction of panel genes are found (default 0.5).
    pub min_panel_fraction: f64,
    pub overwrite: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyReport {
    pub out: PathBuf,
    pub n_cells: usize,
    pub panel_genes: usize,
    pub missing_genes: Vec<String>,
    /// Seconds opening the input and waiting for blocks of cells to be read (a block is read while the
    /// one before it is computed), and the rest of the wall time: computing and writing the calls.
    pub read_seconds: f64,
    pub compute_seconds: f64,
    pub cells_per_minute: f64,
}

/// Runs a tool on cells and writes `cell, pseudotime, cell_type, probability, latent_1…latent_d`.
pub fn apply(config: &ApplyConfig) -> Result<ApplyReport, ExportError> {
    if !(0.0..=1.0).contains(&config.min_panel_fraction) {
        return Err(ExportError::option(
            "--min-panel-fraction",
            format!("{} must be a fraction in [0, 1]", config.min_panel_fraction),
        ));
    }
    let loaded = read_tool(&config.tool)?;
    if config.out.exists() && !config.overwrite {
        return Err(ExportError::option(
            "--out",
            format!("{} exists; pass --overwrite to replace it", config.out.display()),
        ));
    }
    let started = Instant::now();
    let (source, _decompressed) = cells::open_cells(&config.cells)?;
    let mut read_seconds = started.elapsed().as_secs_f64();
    let genes = source.genes();
    let panel = &loaded.card.panel;
    let columns = cells::match_panel(genes, panel);
    let missing: Vec<String> = panel
        .iter()
        .zip(&columns)
        .filter(|(_, c)| c.is_none())
        .map(|(g, _)| g.symbol.clone().unwrap_or_else(|| g.id.clone()))
        .collect();
    let found = panel.len() - missing.len();
    if (found as f64) < config.min_panel_fraction * panel.len() as f64 {
        return Err(ExportError::invalid(
            &config.cells.path,
            format!(
                "only {found} of the tool's {} panel genes are in these cells (e.g. missing {}); the tool needs at \
                 least {:.0} %. Check the gene id column (--gene-id-column), --orthologs for mouse data, or that \
                 the tool fits these cells",
                panel.len(),
                missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                config.min_panel_fraction * 100.0
            ),
        ));
    }
    if !missing.is_empty() {
        tracing::warn!(
            "{} of {} panel genes are missing from {} and count as 0: {}",
            missing.len(),
            panel.len(),
            config.cells.path.display(),
            missing.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let tool = &loaded.tool;
    let g = tool.folded();
    let d = tool.d_latent();
    let mut col_to_panel = vec![u32::MAX; genes.n_genes];
    for (j, col) in columns.iter().enumerate() {
        if let Some(col) = col {
            col_to_panel[*col] = j as u32;
        }
    }
    let labels = &loaded.card.labels;
    let cell_names = source.cell_names();
    let n_cells = source.n_cells();

    let mut file = scinterp_engine::formats::AtomicFile::create(&config.out)?;
    let tmp = file.temporary().to_path_buf();
    let io = |e| ExportError::Io {
        path: tmp.clone(),
        action: "cannot write",
        source: e,
    };
    let mut header = String::from("cell\tpseudotime\tcell_type\tprobability");
    for k in 1..=d {
        header.push_str(&format!("\tlatent_{k}"));
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file.file());
    writeln!(w, "{header}").map_err(io)?;
    // The cells stream through in blocks whose arrays are reused: the file's next block is read on a
    // thread of its own while this one is computed, and no more than a few blocks are ever in memory
    // (touching fresh memory for a whole matrix cost more than the tool itself).
    let blocks: Vec<Range<usize>> = (0..n_cells)
        .step_by(BLOCK_CELLS)
        .map(|a| a..(a + BLOCK_CELLS).min(n_cells))
        .collect();
    source.read_ahead(blocks.clone());
    let mut texts: Vec<String> = Vec::new();
    for cells in blocks {
        let waited = Instant::now();
        let block = source.block(cells.clone())?;
        read_seconds += waited.elapsed().as_secs_f64();
        let m = &block.matrix;
        // Local rows of the block and the cell number in the whole input of its first row.
        let (rows, first) = (block.cells.clone(), block.first + block.cells.start);
        let chunks: Vec<Range<usize>> = rows
            .clone()
            .step_by(CHUNK_CELLS)
            .map(|a| a..(a + CHUNK_CELLS).min(rows.end))
            .collect();
        texts.resize_with(chunks.len().max(texts.len()), String::new);
        chunks
            .par_iter()
            .zip(texts.par_iter_mut())
            .for_each(|(chunk, text)| {
                text.clear();
                let mut z = vec![0f32; d];
                let mut p = vec![0f32; tool.n_classes()];
                for row in chunk.clone() {
                    tool_latent(m, row, &col_to_panel, &g.data, &tool.adaptor_bias, &mut z);
                    let t = tool.readouts(&z, &mut p);
                    let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                    use std::fmt::Write as _;
                    let name = &cell_names[first + row - rows.start];
                    let _ = write!(text, "{name}\t{t}\t{}\t{}", labels[best], p[best]);
                    for v in &z {
                        let _ = write!(text, "\t{v}");
                    }
                    text.push('\n');
                }
            });
        for text in &texts[..chunks.len()] {
            w.write_all(text.as_bytes()).map_err(io)?;
        }
        source.recycle(block);
    }
    w.flush().map_err(io)?;
    drop(w);
    file.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    let compute_seconds = seconds - read_seconds;
    Ok(ApplyReport {
        out: config.out.clone(),
        n_cells,
        panel_genes: panel.len(),
        missing_genes: missing,
        read_seconds,
        compute_seconds,
        cells_per_minute: n_cells as f64 / seconds.max(1e-9) * 60.0,
    })
}

/// The latent row of cell `row`: `z = b + Σ_j log1p(CP10k_j)·G[j, :]` over the cell's non-zero panel
/// genes (`col_to_panel[gene]` = the gene's panel index, `u32::MAX` off the panel).
fn tool_latent(m: &CountMatrix, row: usize, col_to_panel: &[u32], g: &[f32], bias: &[f32], z: &mut [f32]) {
    let d = z.len();
    z.copy_from_slice(bias);
    let range = m.indptr[row]..m.indptr[row + 1];
    let (genes, values) = (&m.indices[range.clone()], &m.values[range]);
    let total: f64 = values.iter().map(|&v| v as f64).sum();
    if total <= 0.0 {
        return;
    }
    let scale = 1e4 / total;
    for (&gene, &v) in genes.iter().zip(values) {
        let j = col_to_panel[gene as usize];
        if j != u32::MAX {
            let x = (v as f64 * scale).ln_1p() as f32;
            for (zk, gk) in z.iter_mut().zip(&g[j as usize * d..(j as usize + 1) * d]) {
                *zk += x * gk;
            }
        }
    }
}
