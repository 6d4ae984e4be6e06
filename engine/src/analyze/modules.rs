//! Modules of co-activating features: seeded Leiden (leiden-rs) on the significant co-activation
//! edges, weighted by PMI, with the RB-configuration quality (γ = 1 is modularity) as published.

use leiden_rs::{GraphDataBuilder, Leiden, LeidenConfig, QualityType};

/// Communities of at least `min_size` features.
#[derive(Clone, Debug, PartialEq)]
pub struct Modules {
    /// (feature, module) for every feature in a module; modules numbered by size, largest first.
    pub members: Vec<(u32, u32)>,
    pub sizes: Vec<usize>,
    pub quality: f64,
}

/// Why the Leiden clustering failed.
#[derive(Debug, thiserror::Error)]
pub enum LeidenError {
    #[error("edge {a}–{b} ({weight}): {reason}")]
    Edge {
        a: u32,
        b: u32,
        weight: f64,
        reason: String,
    },
    #[error("{0}")]
    Graph(String),
}

/// Clusters `n` nodes joined by `edges` (a, b, weight > 0).
pub fn leiden_modules(
    n: usize,
    edges: &[(u32, u32, f64)],
    resolution: f64,
    seed: u64,
    min_size: usize,
) -> Result<Modules, LeidenError> {
    if edges.is_empty() {
        return Ok(Modules {
            members: vec![],
            sizes: vec![],
            quality: 0.0,
        });
    }
    let mut builder = GraphDataBuilder::new(n);
    for &(a, b, w) in edges {
        builder
            .add_edge(a as usize, b as usize, w)
            .map_err(|e| LeidenError::Edge {
                a,
                b,
                weight: w,
                reason: e.to_string(),
            })?;
    }
    let graph = builder.build().map_err(|e| LeidenError::Graph(e.to_string()))?;
    let config = LeidenConfig {
        resolution,
        seed: Some(seed),
        quality: QualityType::RBConfiguration,
        ..LeidenConfig::default()
    };
    let out = Leiden::new(config)
        .run(&graph)
        .map_err(|e| LeidenError::Graph(e.to_string()))?;
    let mut by_community: Vec<Vec<u32>> = vec![Vec::new(); out.partition.num_communities()];
    let mut touched = vec![false; n];
    for &(a, b, _) in edges {
        touched[a as usize] = true;
        touched[b as usize] = true;
    }
    for node in (0..n).filter(|&v| touched[v]) {
        by_community[out.partition.community_of(node)].push(node as u32);
    }
    by_community.retain(|c| c.len() >= min_size);
    // Largest first, ties by smallest member, so numbering does not depend on leiden-rs' labels.
    by_community.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    let mut members: Vec<(u32, u32)> = by_community
        .iter()
        .enumerate()
        .flat_map(|(m, c)| c.iter().map(move |&f| (f, m as u32)))
        .collect();
    members.sort_unstable();
    Ok(Modules {
        members,
        sizes: by_community.iter().map(Vec::len).collect(),
        quality: out.quality,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_planted_cliques_reproducibly() {
        // Three 6-cliques joined in a ring by single weak edges, plus an isolated pair.
        let mut edges = Vec::new();
        for c in 0..3u32 {
            for i in 0..6 {
                for j in i + 1..6 {
                    edges.push((c * 6 + i, c * 6 + j, 2.0));
                }
            }
            edges.push((c * 6, ((c + 1) % 3) * 6 + 1, 0.1));
        }
        edges.push((18, 19, 1.0));
        let m = leiden_modules(20, &edges, 1.0, 42, 3).unwrap();
        assert_eq!(m.sizes, vec![6, 6, 6]);
        for c in 0..3u32 {
            let module: Vec<u32> = (0..6).map(|i| m.members[(c * 6 + i) as usize].1).collect();
            assert!(module.iter().all(|&x| x == module[0]), "{:?}", m.members);
        }
        assert!(m.members.iter().all(|&(f, _)| f < 18));
        assert_eq!(m, leiden_modules(20, &edges, 1.0, 42, 3).unwrap());
    }
}
