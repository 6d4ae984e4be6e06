//! Ground truth for SAE training: activations made from a known overcomplete dictionary.
//!
//! `x = offset + Σ_{i ∈ S} c_i·atom_i + noise`, with `atoms` random unit vectors in `d` dimensions,
//! `S` a uniformly drawn set of `active` distinct atoms per row, coefficients `c_i` uniform in
//! [0.5, 2.0] (sparse, non-negative), a fixed random offset of norm 1 (so that `b_dec` has something
//! to learn) and Gaussian noise of expected norm `noise`. Every row is drawn from its own counter-based
//! stream, so rows can be made in parallel and in any order with the same result.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::FlagError;
use super::TopKSae;
use crate::rng::Rng;

/// What to generate.
/// (Fields in alphabetical order: the order a store's manifest has always recorded them in.)
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SynthSpec {
    pub active: usize,
    pub atoms: usize,
    pub d: usize,
    pub noise: f64,
    pub seed: u64,
}

impl SynthSpec {
    pub fn validate(&self) -> Result<(), FlagError> {
        if self.d == 0 {
            return Err(FlagError::new("d-in", 0, "must be at least 1"));
        }
        if self.atoms == 0 {
            return Err(FlagError::new("atoms", 0, "must be at least 1"));
        }
        if self.active == 0 || self.active > self.atoms {
            return Err(FlagError::new(
                "active",
                self.active,
                format!("must be in 1..={} (--atoms)", self.atoms),
            ));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(FlagError::new("noise", self.noise, "must be finite and ≥ 0"));
        }
        Ok(())
    }

    /// The planted atoms, `[atoms, d]`, unit norm.
    pub fn dictionary(&self) -> Vec<f32> {
        let mut rng = Rng::new(self.seed, 0xD1C7);
        let mut dict: Vec<f32> = (0..self.atoms * self.d).map(|_| rng.normal() as f32).collect();
        dict.par_chunks_mut(self.d).for_each(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        });
        dict
    }

    fn offset(&self) -> Vec<f32> {
        let mut rng = Rng::new(self.seed, 0x0FF5);
        let v: Vec<f64> = (0..self.d).map(|_| rng.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / norm) as f32).collect()
    }

    /// Rows `first..first + out.len() / d` into `out`.
    pub fn rows(&self, dictionary: &[f32], first: usize, out: &mut [f32]) {
        let d = self.d;
        let offset = self.offset();
        let sigma = self.noise / (d as f64).sqrt();
        out.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            let mut rng = Rng::new(self.seed, (1u64 << 40) + (first + i) as u64);
            row.copy_from_slice(&offset);
            let mut chosen: Vec<usize> = Vec::with_capacity(self.active);
            while chosen.len() < self.active {
                let a = rng.below(self.atoms);
                if !chosen.contains(&a) {
                    chosen.push(a);
                }
            }
            for a in chosen {
                let c = (0.5 + 1.5 * rng.uniform()) as f32;
                for (v, w) in row.iter_mut().zip(&dictionary[a * d..(a + 1) * d]) {
                    *v += c * w;
                }
            }
            for v in row.iter_mut() {
                *v += (sigma * rng.normal()) as f32;
            }
        });
    }
}

/// How well an SAE's decoder recovers the planted atoms.
#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub atoms: usize,
    /// Atoms whose best-matching decoder row has cosine ≥ `threshold`.
    pub recovered: usize,
    pub recovered_fraction: f64,
    pub threshold: f64,
    pub mean_best_cosine: f64,
}

/// For every planted atom, the largest cosine with any decoder row.
pub fn recovery(sae: &TopKSae, dictionary: &[f32], threshold: f64) -> Recovery {
    let d = sae.d_in;
    let norms: Vec<f32> = sae
        .w_dec
        .chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12))
        .collect();
    let best: Vec<f64> = dictionary
        .par_chunks(d)
        .map(|atom| {
            sae.w_dec
                .chunks(d)
                .zip(&norms)
                .map(|(row, n)| (super::dot(atom, row) / n) as f64)
                .fold(f64::MIN, f64::max)
        })
        .collect();
    let recovered = best.iter().filter(|&&c| c >= threshold).count();
    Recovery {
        atoms: best.len(),
        recovered,
        recovered_fraction: recovered as f64 / best.len().max(1) as f64,
        threshold,
        mean_best_cosine: best.iter().sum::<f64>() / best.len().max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::super::train::{evaluate, train, MemoryRows, TrainConfig};
    use super::*;

    fn recover(spec: &SynthSpec, d_sae: usize, k: usize, tokens: u64) -> (Recovery, f64, usize) {
        let dict = spec.dictionary();
        let n = 60_000;
        let mut data = vec![0.0f32; n * spec.d];
        spec.rows(&dict, 0, &mut data);
        let source = MemoryRows { d: spec.d, data };
        let mut cfg = TrainConfig::new(spec.d, d_sae, k, tokens);
        cfg.batch_size = 1024;
        cfg.lr = 2e-3;
        cfg.dead_after_tokens = 50_000;
        cfg.seed = spec.seed;
        cfg.warmup_steps = 20;
        let (sae, summary) = train(
            &source,
            std::slice::from_ref(&(0..50_000)),
            &cfg,
            &mut |_, _, _| {},
        )
        .unwrap();
        let held = evaluate(&sae, &source, std::slice::from_ref(&(50_000..n)));
        (recovery(&sae, &dict, 0.9), held.fvu, summary.dead_latents_at_end)
    }

    /// The planted atoms come back (≥ 90 % at cosine ≥ 0.9) on dictionaries of two sizes.
    #[test]
    fn a_trained_sae_recovers_the_planted_dictionary() {
        for (d, seed) in [(16usize, 1u64), (24, 2)] {
            let spec = SynthSpec {
                d,
                atoms: 4 * d,
                active: 3,
                noise: 0.05,
                seed,
            };
            // An SAE twice as wide as the dictionary, k = the number of active atoms.
            let (rec, fvu, dead) = recover(&spec, 8 * d, 3, 1_500_000);
            eprintln!(
                "d {d}: recovered {}/{} (mean best cos {:.3}), held-out FVU {fvu:.4}, dead {dead}",
                rec.recovered, rec.atoms, rec.mean_best_cosine
            );
            assert!(rec.recovered_fraction >= 0.9, "d {d}: {rec:?}");
            assert!(fvu < 0.2, "d {d}: held-out FVU {fvu}");
        }
    }

    #[test]
    fn rows_do_not_depend_on_how_they_are_cut() {
        let spec = SynthSpec {
            d: 8,
            atoms: 32,
            active: 2,
            noise: 0.1,
            seed: 3,
        };
        let dict = spec.dictionary();
        let mut all = vec![0.0f32; 10 * 8];
        spec.rows(&dict, 0, &mut all);
        let mut tail = vec![0.0f32; 4 * 8];
        spec.rows(&dict, 6, &mut tail);
        assert_eq!(&all[6 * 8..], &tail[..]);
    }
}
