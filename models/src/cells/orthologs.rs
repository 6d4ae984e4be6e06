//! Mouse → human gene symbols through an ortholog table, so that mouse data can be tokenized for the
//! human-trained models (e.g. `Ensembl105_Human2Mouse_Genes.csv`: `human_symbol,mouse_symbol` per line,
//! no header, empty mouse column where there is no ortholog).
//!
//! Rule: a mouse gene takes the **first** human symbol listed for it in the table (file order). A mouse
//! gene without an ortholog gets an id that no dictionary holds (`unmapped:<symbol>`), so that it can never
//! match a human alias by accident (e.g. `Gata1` upper-cased to `GATA1`).

use std::collections::HashMap;
use std::path::Path;

use super::{CellsError, CountMatrix};

/// Mouse symbol → human symbols, in table order.
#[derive(Clone, Debug, Default)]
pub struct OrthologTable {
    mouse_to_human: HashMap<String, Vec<String>>,
}

impl OrthologTable {
    /// Reads a two-column CSV `human,mouse` (a header line `human…,mouse…` is skipped if present).
    pub fn read(path: &Path) -> Result<Self, CellsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CellsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut mouse_to_human: HashMap<String, Vec<String>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((human, mouse)) = line.split_once(',') else {
                return Err(CellsError::invalid(
                    path,
                    format!("line {}: expected `human_symbol,mouse_symbol`", n + 1),
                ));
            };
            let (human, mouse) = (human.trim(), mouse.trim());
            if n == 0 && human.to_ascii_lowercase().contains("human") {
                continue; // header
            }
            if human.is_empty() || mouse.is_empty() {
                continue; // no ortholog
            }
            mouse_to_human
                .entry(mouse.to_string())
                .or_default()
                .push(human.to_string());
        }
        if mouse_to_human.is_empty() {
            return Err(CellsError::invalid(
                path,
                "no human–mouse pairs found; expected lines `human,mouse`",
            ));
        }
        Ok(OrthologTable { mouse_to_human })
    }

    pub fn len(&self) -> usize {
        self.mouse_to_human.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mouse_to_human.is_empty()
    }

    /// The human symbol for a mouse symbol (first listed), if any.
    pub fn human_for(&self, mouse: &str) -> Option<&str> {
        self.mouse_to_human
            .get(mouse)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Replaces the matrix's gene ids (mouse symbols) by human symbols; returns how many mapped.
    pub fn translate(&self, matrix: &mut CountMatrix) -> usize {
        let mut mapped = 0;
        for id in &mut matrix.gene_ids {
            match self.human_for(id) {
                Some(human) => {
                    *id = human.to_string();
                    mapped += 1;
                }
                None => *id = format!("unmapped:{id}"),
            }
        }
        matrix.gene_symbols = None;
        mapped
    }
}

/// When most of `ids` look like mouse genes (`Gata1`: an upper-case letter then lower-case ones; or
/// `ENSMUSG…`), how many do and a few examples. Human vocabularies match some mouse symbols by case alone
/// (Gata1 → GATA1), so such input needs an ortholog table rather than a silent partial match.
pub fn mouse_like_ids(ids: &[String]) -> Option<(usize, Vec<String>)> {
    let mouse = |s: &&String| {
        let mut c = s.chars();
        let symbol_like = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        s.starts_with("ENSMUSG")
            || symbol_like
                && matches!((c.next(), c.next()), (Some(a), Some(b)) if a.is_ascii_uppercase() && b.is_ascii_lowercase())
    };
    let n = ids.iter().filter(mouse).count();
    (n > 0 && n * 2 > ids.len()).then(|| (n, ids.iter().filter(mouse).take(3).cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mouse_symbols_are_told_from_human_ones_and_from_other_text() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (n, examples) = mouse_like_ids(&ids(&["Gata1", "Cd3e", "ENSMUSG00000031162", "GATA1"])).unwrap();
        assert_eq!((n, examples.len()), (3, 3));
        assert!(mouse_like_ids(&ids(&["GATA1", "C1orf112", "CD3E", "Gata1"])).is_none());
        assert!(mouse_like_ids(&ids(&["Gene Expression", "Gene Expression"])).is_none());
        assert!(mouse_like_ids(&[]).is_none());
    }

    #[test]
    fn translates_first_listed_ortholog_and_marks_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.csv");
        std::fs::write(
            &p,
            "GATA1,Gata1\nMT-ND1,mt-Nd1\nHBA1,Hba-a1\nHBA2,Hba-a1\nNOPE,\n",
        )
        .unwrap();
        let t = OrthologTable::read(&p).unwrap();
        assert_eq!(t.human_for("Hba-a1"), Some("HBA1"));
        assert_eq!(t.human_for("Gata2"), None);
        let mut m = CountMatrix {
            n_cells: 1,
            n_genes: 3,
            indptr: vec![0, 1],
            indices: vec![0].into(),
            values: vec![1.0].into(),
            gene_ids: vec!["Gata1".into(), "Gata2".into(), "mt-Nd1".into()],
            gene_symbols: None,
            cell_names: vec!["c".into()],
            obs: Default::default(),
        };
        assert_eq!(t.translate(&mut m), 2);
        assert_eq!(m.gene_ids, vec!["GATA1", "unmapped:Gata2", "MT-ND1"]);
        std::fs::write(&p, "just one column\n").unwrap();
        assert!(OrthologTable::read(&p).is_err());
    }

    #[test]
    fn reads_the_shared_human_mouse_table() {
        let Some(p) = crate::test_data::shared_data("orthologs/Ensembl105_Human2Mouse_Genes.csv") else {
            return;
        };
        let p = p.as_path();
        let t = OrthologTable::read(p).unwrap();
        assert_eq!(t.human_for("Gata1"), Some("GATA1"));
        assert!(t.len() > 20_000, "{}", t.len());
    }
}
