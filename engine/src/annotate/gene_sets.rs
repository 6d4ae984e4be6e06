//! Gene-set libraries: GMT files read as they are, then mapped onto a catalog's background.
//!
//! GMT: one term per line, tab-separated: name, description, genes. MSigDB puts a URL in the
//! description; Enrichr leaves it empty (two tabs in a row). Enrichr's weighted libraries write genes as
//! `SYMBOL,1.0`: the weight is dropped. The library's name is the file's stem.
//!
//! Mapping (methods A8): a term's genes are the background genes its names match (symbol or gene id,
//! ignoring case); its size is counted inside the background; terms whose size lies outside
//! [min, max] are not tested. The library's universe in the background (the population N of its tests)
//! is the background genes that any of its terms names, before the size filter.

use std::path::{Path, PathBuf};

use super::{AnnotateError, Background};

/// One term: its name and its genes as written in the file (duplicates removed).
#[derive(Clone, Debug)]
pub struct GeneSet {
    pub name: String,
    pub genes: Vec<String>,
}

/// A library as read from a file.
#[derive(Clone, Debug)]
pub struct GeneSetLibrary {
    pub name: String,
    pub source: PathBuf,
    pub terms: Vec<GeneSet>,
}

impl GeneSetLibrary {
    /// Distinct gene names over all terms.
    pub fn n_genes(&self) -> usize {
        let mut all: Vec<&str> = self
            .terms
            .iter()
            .flat_map(|t| t.genes.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// Reads a GMT file; the library is named after the file's stem. A file with no term is an error.
pub fn read_gmt(path: &Path) -> Result<GeneSetLibrary, AnnotateError> {
    let bytes = std::fs::read(path).map_err(|e| AnnotateError::file(path, format!("cannot read: {e}")))?;
    let text = String::from_utf8_lossy(&bytes);
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("gene_sets")
        .to_string();
    parse_gmt(&text, &name, path)
}

/// Parses GMT text (see the module documentation); `path` is used in messages.
pub fn parse_gmt(text: &str, name: &str, path: &Path) -> Result<GeneSetLibrary, AnnotateError> {
    let mut terms = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split('\t');
        let term = fields.next().unwrap_or("").trim();
        if term.is_empty() {
            return Err(AnnotateError::file(
                path,
                format!(
                    "line {}: empty term name; a GMT line is `name<TAB>description<TAB>gene<TAB>gene…`",
                    line_no + 1
                ),
            ));
        }
        let Some(_description) = fields.next() else {
            return Err(AnnotateError::file(
                path,
                format!(
                    "line {}: one field only; a GMT line is `name<TAB>description<TAB>gene<TAB>gene…` \
                     (is the file tab-separated?)",
                    line_no + 1
                ),
            ));
        };
        let mut genes: Vec<String> = fields
            .map(|g| g.split(',').next().unwrap_or("").trim())
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        let mut seen = std::collections::HashSet::new();
        genes.retain(|g| seen.insert(g.to_ascii_uppercase()));
        if !genes.is_empty() {
            terms.push(GeneSet {
                name: term.to_string(),
                genes,
            });
        }
    }
    if terms.is_empty() {
        return Err(AnnotateError::file(
            path,
            "no term with genes: a GMT file has one term per line, `name<TAB>description<TAB>gene<TAB>gene…`",
        ));
    }
    Ok(GeneSetLibrary {
        name: name.to_string(),
        source: path.to_path_buf(),
        terms,
    })
}

/// A tested term: its name and its genes in the background (sorted background indices).
#[derive(Clone, Debug)]
pub struct MappedTerm {
    pub name: String,
    pub genes: Vec<u32>,
}

/// A library mapped onto one background.
#[derive(Clone, Debug)]
pub struct MappedLibrary {
    pub name: String,
    /// Background genes named by any term (the population of this library's tests).
    pub universe: usize,
    /// Per background gene: named by some term.
    pub in_universe: Vec<bool>,
    /// The terms whose size in the background lies in [min, max].
    pub terms: Vec<MappedTerm>,
    pub terms_below_min: usize,
    pub terms_above_max: usize,
    /// Inverted index: the tested terms of background gene g are `index[offsets[g]..offsets[g + 1]]`.
    offsets: Vec<u32>,
    index: Vec<u32>,
}

impl MappedLibrary {
    /// Maps `library` onto `background`, keeping terms of size in [min_size, max_size]. A library none
    /// of whose genes is in the background is an error (the id kinds probably differ).
    pub fn map(
        library: &GeneSetLibrary,
        background: &Background,
        min_size: usize,
        max_size: usize,
    ) -> Result<Self, AnnotateError> {
        let n = background.len();
        let mut in_universe = vec![false; n];
        let mut terms = Vec::new();
        let (mut below, mut above) = (0, 0);
        for term in &library.terms {
            let mut genes: Vec<u32> = term
                .genes
                .iter()
                .flat_map(|g| background.matches(g).iter().copied())
                .collect();
            genes.sort_unstable();
            genes.dedup();
            for &g in &genes {
                in_universe[g as usize] = true;
            }
            if genes.len() < min_size {
                below += 1;
            } else if genes.len() > max_size {
                above += 1;
            } else {
                terms.push(MappedTerm {
                    name: term.name.clone(),
                    genes,
                });
            }
        }
        let universe = in_universe.iter().filter(|&&b| b).count();
        if universe == 0 {
            let examples: Vec<&str> = library
                .terms
                .iter()
                .flat_map(|t| t.genes.iter().map(String::as_str))
                .take(3)
                .collect();
            return Err(background.no_overlap_error(&library.source, "library", &examples));
        }
        // Counting sort of (gene, term) pairs into the inverted index.
        let mut offsets = vec![0u32; n + 1];
        for t in &terms {
            for &g in &t.genes {
                offsets[g as usize + 1] += 1;
            }
        }
        for g in 0..n {
            offsets[g + 1] += offsets[g];
        }
        let mut fill = offsets.clone();
        let mut index = vec![0u32; offsets[n] as usize];
        for (ti, t) in terms.iter().enumerate() {
            for &g in &t.genes {
                index[fill[g as usize] as usize] = ti as u32;
                fill[g as usize] += 1;
            }
        }
        Ok(MappedLibrary {
            name: library.name.clone(),
            universe,
            in_universe,
            terms,
            terms_below_min: below,
            terms_above_max: above,
            offsets,
            index,
        })
    }

    /// The tested terms that contain background gene `gene`.
    pub fn terms_of(&self, gene: u32) -> &[u32] {
        let g = gene as usize;
        &self.index[self.offsets[g] as usize..self.offsets[g + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bg() -> Background {
        let ids = (0..10).map(|i| format!("ENSG{i:011}")).collect();
        let symbols = (0..10).map(|i| format!("G{i}")).collect();
        Background::new(ids, symbols).unwrap()
    }

    #[test]
    fn reads_msigdb_and_enrichr_styles() {
        let text =
            "HALLMARK_A\thttp://x\tG1\tG2\tG3\r\n\nB (GO:1)\t\tG4,1.0\tG5,0.5\tg4\n#comment\nEMPTY\tdesc\n";
        let lib = parse_gmt(text, "lib", Path::new("x.gmt")).unwrap();
        assert_eq!(lib.terms.len(), 2);
        assert_eq!(lib.terms[0].name, "HALLMARK_A");
        assert_eq!(lib.terms[0].genes, ["G1", "G2", "G3"]);
        assert_eq!(lib.terms[1].name, "B (GO:1)");
        assert_eq!(lib.terms[1].genes, ["G4", "G5"]);
        assert_eq!(lib.n_genes(), 5);
        let err = parse_gmt("\n#x\nA\tdesc\n", "lib", Path::new("e.gmt")).unwrap_err();
        assert!(err.to_string().contains("e.gmt: no term"), "{err}");
        let err = parse_gmt("A G1 G2\n", "lib", Path::new("s.gmt")).unwrap_err();
        assert!(err.to_string().contains("tab-separated"), "{err}");
    }

    #[test]
    fn maps_onto_the_background_with_sizes_inside_it() {
        let text = "T1\t\tG1\tG2\tENSG00000000003\tNOTHERE\nT2\t\tg1\tG2\nT3\t\tG5\tG6\tG7\tG8\tG9\tG0\n";
        let lib = parse_gmt(text, "lib", Path::new("x.gmt")).unwrap();
        let m = MappedLibrary::map(&lib, &bg(), 3, 5).unwrap();
        // T1: 3 genes in the background (NOTHERE is not); T2: 2 < 3; T3: 6 > 5.
        assert_eq!(m.terms.len(), 1);
        assert_eq!(m.terms[0].genes, [1, 2, 3]);
        assert_eq!((m.terms_below_min, m.terms_above_max), (1, 1));
        // The universe counts every term's genes, before the size filter.
        assert_eq!(m.universe, 9);
        assert!(!m.in_universe[4]);
        assert_eq!(m.terms_of(2), &[0]);
        assert!(m.terms_of(5).is_empty());
        // No overlap at all: an error that names the file and the likely cause.
        let other = parse_gmt("X\t\tFOO\tBAR\n", "lib", Path::new("other.gmt")).unwrap();
        let err = MappedLibrary::map(&other, &bg(), 1, 10).unwrap_err().to_string();
        assert!(
            err.contains("other.gmt") && err.contains("symbols vs Ensembl"),
            "{err}"
        );
        let no_symbols = Background::new(
            vec!["ENSG1".into(), "ENSG2".into()],
            vec![String::new(), String::new()],
        )
        .unwrap();
        let err = MappedLibrary::map(&other, &no_symbols, 1, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbol column is empty"), "{err}");
    }
}
