//! `scinterp apply`: a tool on new cells. Panel genes are matched by Ensembl id or symbol, counts become
//! log1p-CP10k, and the tool runs folded (`latent = x·G + b`, G = the operator chain times the adaptor,
//! `[N, d]`) over each cell's non-zero panel genes only; the readouts follow. The calls go to a TSV
//! written under a temporary name and renamed when complete.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use crate::cells::{self, CellInput};
use crate::error::ExportError;
use crate::files::read_tool;

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
    /// Seconds reading the cells, and computing + writing the calls.
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
    let m = cells::read_cells(&config.cells)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let panel = &loaded.card.panel;
    let columns = cells::match_panel(&m, panel);
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
    let (d, c) = (tool.d_latent(), tool.n_classes());
    let mut col_to_panel = vec![u32::MAX; m.n_genes];
    for (j, col) in columns.iter().enumerate() {
        if let Some(col) = col {
            col_to_panel[*col] = j as u32;
        }
    }
    let labels = &loaded.card.labels;
    // One text block per chunk of cells, formatted in parallel.
    let chunks: Vec<String> = (0..m.n_cells)
        .collect::<Vec<_>>()
        .par_chunks(4096)
        .map(|cells| {
            let mut text = String::with_capacity(cells.len() * (32 + 12 * d));
            let mut z = vec![0f32; d];
            let mut p = vec![0f32; c];
            for &cell in cells {
                z.copy_from_slice(&tool.adaptor_bias);
                let total: f64 = m.cell(cell).map(|(_, v)| v as f64).sum();
                if total > 0.0 {
                    let scale = 1e4 / total;
                    for (gene, v) in m.cell(cell) {
                        let j = col_to_panel[gene];
                        if j != u32::MAX {
                            let x = (v as f64 * scale).ln_1p() as f32;
                            for (zk, gk) in z.iter_mut().zip(&g.data[j as usize * d..(j as usize + 1) * d]) {
                                *zk += x * gk;
                            }
                        }
                    }
                }
                let t = tool.readouts(&z, &mut p);
                let best = (0..c).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                use std::fmt::Write as _;
                let _ = write!(text, "{}\t{t}\t{}\t{}", m.cell_names[cell], labels[best], p[best]);
                for v in &z {
                    let _ = write!(text, "\t{v}");
                }
                text.push('\n');
            }
            text
        })
        .collect();
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
    {
        let mut w = std::io::BufWriter::new(file.file());
        writeln!(w, "{header}").map_err(io)?;
        for chunk in &chunks {
            w.write_all(chunk.as_bytes()).map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    file.commit()?;
    let compute_seconds = started.elapsed().as_secs_f64();
    Ok(ApplyReport {
        out: config.out.clone(),
        n_cells: m.n_cells,
        panel_genes: panel.len(),
        missing_genes: missing,
        read_seconds,
        compute_seconds,
        cells_per_minute: m.n_cells as f64 / (read_seconds + compute_seconds).max(1e-9) * 60.0,
    })
}
