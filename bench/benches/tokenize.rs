//! Criterion benchmark of Geneformer V2 ranking (`GeneformerTokenizer::tokenize_cells`) on a synthetic
//! matrix shaped like the tokenize comparison's input: 20,000 genes, about 2,000 expressed per cell,
//! geometric integer counts. Run: `cargo bench -p scinterp-bench --bench tokenize`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scinterp_models::cells::CountMatrix;
use scinterp_models::tokenize::geneformer::{
    GeneformerDictionaries, GeneformerTokenizer, GeneformerVersion, TokenizerOptions,
};

const GENES: usize = 20_000;
const CELLS: usize = 2_000;

fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn dictionaries() -> GeneformerDictionaries {
    let mut d = GeneformerDictionaries {
        version: Some(GeneformerVersion::V2),
        ..Default::default()
    };
    for (i, s) in ["<pad>", "<mask>", "<cls>", "<eos>"].iter().enumerate() {
        d.token.insert(s.to_string(), i as u32);
    }
    let mut state = 1;
    for g in 0..GENES {
        let id = format!("ENSG{g:011}");
        d.token.insert(id.clone(), 4 + g as u32);
        d.median
            .insert(id.clone(), 0.5 + (next(&mut state) % 1000) as f64 / 100.0);
        d.ensembl_mapping.insert(id.clone(), id);
    }
    d
}

fn matrix() -> CountMatrix {
    let mut state = 2;
    let (mut indptr, mut indices, mut values) = (vec![0], Vec::new(), Vec::new());
    for _ in 0..CELLS {
        for g in 0..GENES as u32 {
            if next(&mut state).is_multiple_of(10) {
                // Geometric counts: 1 with probability 1/2, 2 with 1/4, …
                let count = 1 + (next(&mut state) | 1 << 30).trailing_zeros();
                indices.push(g);
                values.push(count as f32);
            }
        }
        indptr.push(indices.len());
    }
    CountMatrix {
        n_cells: CELLS,
        n_genes: GENES,
        indptr,
        indices: indices.into(),
        values: values.into(),
        gene_ids: (0..GENES).map(|g| format!("ENSG{g:011}")).collect(),
        gene_symbols: None,
        cell_names: (0..CELLS).map(|c| format!("cell{c}")).collect(),
        obs: BTreeMap::new(),
    }
}

fn bench_rank(c: &mut Criterion) {
    let tokenizer =
        GeneformerTokenizer::new(&dictionaries(), TokenizerOptions::new(GeneformerVersion::V2)).unwrap();
    let m = matrix();
    let prepared = tokenizer.prepare(&m).unwrap();
    let mut g = c.benchmark_group("geneformer_v2_rank");
    g.throughput(Throughput::Elements(m.values.len() as u64));
    g.bench_function(format!("{CELLS}_cells_{GENES}_genes"), |b| {
        b.iter(|| tokenizer.tokenize_cells(&prepared, &m, 0..CELLS, 0).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_rank);
criterion_main!(benches);
