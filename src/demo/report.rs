//! The report of `scinterp demo` on the embedded models: what came back in each trained model beside
//! its random-weight control (README "The demo" defines every number).

use scinterp_export::demo::embedded::{
    short, EmbeddedReport, SteeringRow, ALPHA, LABELS, STEER_CELLS, STEER_FEATURES, TRACE_SOURCE,
    TRACE_TARGET,
};

pub fn print(report: &EmbeddedReport) {
    let (results, tool) = (&report.arms, &report.tool);
    let find = |model: &str, weights: &str| {
        results
            .iter()
            .find(|r| r.model == model && r.weights == weights)
            .expect("every arm ran")
    };
    println!("\nWhat came back (trained model | random-weight control; q ≤ {ALPHA}; pbmc68k, 700 cells):");
    println!("  features whose top cells are enriched for a cell type ({LABELS}), of alive features:");
    for model in ["geneformer", "scgpt"] {
        let (t, r) = (find(model, "trained"), find(model, "random"));
        for (lt, lr) in t.layers.iter().zip(&r.layers) {
            println!(
                "    {model:<10} {:<8} {:>4}/{:<4} ({:>5.1} %) | {:>4}/{:<4} ({:>5.1} %)   gene-set features {} | {}",
                short(&lt.hook),
                lt.cell_type_features,
                lt.alive,
                100.0 * lt.cell_type_fraction,
                lr.cell_type_features,
                lr.alive,
                100.0 * lr.cell_type_fraction,
                lt.gene_set_features,
                lr.gene_set_features
            );
        }
    }
    println!("  best-annotated features of the trained models:");
    for model in ["geneformer", "scgpt"] {
        for b in &find(model, "trained").best_features {
            let cells = b
                .cell_types
                .iter()
                .map(|(t, q)| format!("{t} (q {q:.1e})"))
                .collect::<Vec<_>>()
                .join(", ");
            let sets = b
                .gene_sets
                .iter()
                .map(|(t, q)| format!("{t} (q {q:.1e})"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "    {model:<10} {} #{:<4} marks {}; gene sets {}; top genes {}",
                short(&b.hook),
                b.feature,
                if cells.is_empty() { "-".into() } else { cells },
                if sets.is_empty() { "-".into() } else { sets },
                b.top_genes.join(" ")
            );
        }
    }
    println!(
        "  traced edges {} → {} (|d| ≥ 0.5, q ≤ {ALPHA}), between annotated features, sharing a term:",
        short(TRACE_SOURCE),
        short(TRACE_TARGET)
    );
    for model in ["geneformer", "scgpt"] {
        let (t, r) = (&find(model, "trained").trace, &find(model, "random").trace);
        println!(
            "    {model:<10} {} edges, {} annotated, {} sharing | {} edges, {} annotated, {} sharing",
            t.edges,
            t.annotated_edges,
            t.edges_sharing_a_term,
            r.edges,
            r.annotated_edges,
            r.edges_sharing_a_term
        );
    }
    for weights in ["trained", "random"] {
        for e in &find("geneformer", weights).effects {
            println!(
                "  effect     geneformer {weights}: α {} on {} #{} → its top-gene logits {:+.4} vs other genes (p {:.1e}), {:+.4} beyond a random direction (p {:.1e})",
                e.alpha,
                short(TRACE_SOURCE),
                e.feature,
                e.target_minus_other,
                e.target_minus_other_p,
                e.vs_control,
                e.vs_control_p
            );
        }
    }
    println!(
        "  steering   {} features of {} amplified (α 4) and ablated (α 0) in {STEER_CELLS} paul15 cells, read \
         through the tool's pseudotime ({} panel genes; shift beyond a random direction, q ≤ {ALPHA}):",
        STEER_FEATURES,
        short(TRACE_SOURCE),
        tool.panel_genes
    );
    for weights in ["trained", "random"] {
        let rows = &find("geneformer", weights).steering;
        for alpha in [4.0, 0.0] {
            let at: Vec<&SteeringRow> = rows.iter().filter(|r| r.alpha == alpha).collect();
            let significant = at.iter().filter(|r| r.vs_control_q <= ALPHA).count();
            let largest = at
                .iter()
                .filter(|r| r.vs_control.is_finite())
                .max_by(|a, b| a.vs_control.abs().total_cmp(&b.vs_control.abs()));
            println!(
                "    geneformer {weights:<7} α {alpha}: {significant}/{} features shift pseudotime beyond the \
                 control{}",
                at.len(),
                largest.map_or(String::new(), |r| format!(
                    "; largest #{} {:+.4} (feature {:+.4}, control {:+.4}, q {:.1e}, {} cells)",
                    r.feature, r.vs_control, r.pseudotime_shift, r.control_shift, r.vs_control_q, r.cells
                ))
            );
        }
    }
    for (name, c) in [
        ("trained", &report.consensus_trained),
        ("random", &report.consensus_random),
    ] {
        println!(
            "  consensus  geneformer × scgpt, {name}: {} conserved term pairs (null mean {:.2}, enrichment {}, p {:.3}); shared terms {}",
            c.conserved_pairs,
            c.null_mean,
            c.enrichment.map_or("-".to_string(), |e| format!("{e:.1}×")),
            c.p_value,
            c.shared_terms
        );
    }
}
