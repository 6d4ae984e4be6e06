//! Geneformer's four dictionary pickles (token, median, gene name, Ensembl mapping), decoded.

use std::collections::HashMap;
use std::path::Path;

use crate::checkpoint::pickle::{self, FlatValue, Value};

use super::*;

/// A dictionary keyed by gene id or symbol. foldhash (seeded per process) instead of SipHash: these maps
/// hold up to 174 k short keys, and building and probing them was a visible part of a run.
pub type DictMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The four Geneformer dictionaries, decoded.
#[derive(Clone, Debug, Default)]
pub struct GeneformerDictionaries {
    pub version: Option<GeneformerVersion>,
    /// Token id of each vocabulary entry (Ensembl ids and `<pad>`, `<mask>`, and for V2 `<cls>`, `<eos>`).
    pub token: DictMap<u32>,
    /// Non-zero median of normalised expression over the pretraining corpus, by Ensembl id.
    pub median: DictMap<f64>,
    /// Gene symbol → Ensembl id.
    pub gene_name_id: DictMap<String>,
    /// Upper-case alias or id → canonical Ensembl id (unfiltered; the tokenizer filters it).
    pub ensembl_mapping: DictMap<String>,
}

impl GeneformerDictionaries {
    fn read_tokens(path: &Path) -> Result<DictMap<u32>, TokenizeError> {
        read_dict(path, |path, v| {
            v.as_i64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| TokenizeError::Dictionary {
                    path: path.to_path_buf(),
                    reason: format!("token ids must be non-negative integers, found a {}", v.kind()),
                })
        })
    }

    fn read_medians(path: &Path) -> Result<DictMap<f64>, TokenizeError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // The numpy float64 scalars of the median files take a fast path (the same values as the VM's).
        if let Some(items) = pickle::f64_scalar_dict_entries(&bytes) {
            let mut out = DictMap::with_capacity_and_hasher(items.len(), Default::default());
            for (k, m) in items {
                if !(m.is_finite() && m > 0.0) {
                    return Err(TokenizeError::Dictionary {
                        path: path.to_path_buf(),
                        reason: format!(
                            "medians must be positive finite numbers, found {:?}",
                            Value::Float(m)
                        ),
                    });
                }
                out.insert(k.to_owned(), m);
            }
            return Ok(out);
        }
        read_dict(path, |path, v| match v.as_f64() {
            Some(m) if m.is_finite() && m > 0.0 => Ok(m),
            _ => Err(TokenizeError::Dictionary {
                path: path.to_path_buf(),
                reason: format!("medians must be positive finite numbers, found {v:?}"),
            }),
        })
    }

    /// Reads the four pickles of `version` from `dir` (V2: `*_gc104M.pkl`, V1: `*_gc30M.pkl`).
    pub fn load(version: GeneformerVersion, dir: &Path) -> Result<Self, TokenizeError> {
        Self::load_for(version, dir, GeneIdKind::Symbol)
    }

    /// [`Self::load`] for a matrix whose ids are `kind`: for Ensembl ids the symbol dictionary
    /// (`gene_name_id`, only used for symbols) is left empty instead of being decoded.
    pub fn load_for(version: GeneformerVersion, dir: &Path, kind: GeneIdKind) -> Result<Self, TokenizeError> {
        let [token_f, median_f, names_f, mapping_f] = version.dictionary_files();
        // The four files are independent: decode them side by side, on threads of their own (not the
        // rayon pool, which the caller may be keeping busy with a matrix meanwhile).
        let (token, median, gene_name_id, ensembl_mapping) = std::thread::scope(|s| {
            let token = s.spawn(|| Self::read_tokens(&dir.join(&token_f)));
            let median = s.spawn(|| Self::read_medians(&dir.join(&median_f)));
            let names = s.spawn(|| match kind {
                GeneIdKind::Symbol => read_dict(&dir.join(&names_f), string_value),
                GeneIdKind::Ensembl => Ok(DictMap::default()),
            });
            let mapping = read_dict(&dir.join(&mapping_f), string_value);
            let failed = |name: &str| TokenizeError::Dictionary {
                path: dir.join(name),
                reason: "the thread decoding it failed".into(),
            };
            (
                token.join().unwrap_or_else(|_| Err(failed(&token_f))),
                median.join().unwrap_or_else(|_| Err(failed(&median_f))),
                names.join().unwrap_or_else(|_| Err(failed(&names_f))),
                mapping,
            )
        });
        let (token, median, gene_name_id, ensembl_mapping) =
            (token?, median?, gene_name_id?, ensembl_mapping?);
        let specials: &[&str] = if version.special_tokens() {
            &["<pad>", "<mask>", "<cls>", "<eos>"]
        } else {
            &["<pad>", "<mask>"]
        };
        for s in specials {
            if !token.contains_key(*s) {
                return Err(TokenizeError::Dictionary {
                    path: dir.join(&version.dictionary_files()[0]),
                    reason: format!("has no `{s}` entry; is it the {version} token dictionary?"),
                });
            }
        }
        Ok(GeneformerDictionaries {
            version: Some(version),
            token,
            median,
            gene_name_id,
            ensembl_mapping,
        })
    }
}

fn string_value(path: &Path, v: Value) -> Result<String, TokenizeError> {
    match v {
        Value::String(s) => Ok(s),
        v => Err(TokenizeError::Dictionary {
            path: path.to_path_buf(),
            reason: format!("values must be strings, found a {}", v.kind()),
        }),
    }
}

fn read_dict<T>(
    path: &Path,
    mut value: impl FnMut(&Path, Value) -> Result<T, TokenizeError>,
) -> Result<DictMap<T>, TokenizeError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Flat str → str / int dictionaries (most of the bytes) take the fast path, borrowed from the bytes:
    // each key and value is copied once, into the map.
    if let Some(items) = pickle::flat_dict_entries(&bytes) {
        let mut out = DictMap::with_capacity_and_hasher(items.len(), Default::default());
        for (k, v) in items {
            let v = match v {
                FlatValue::Str(s) => value(path, Value::String(s.to_owned()))?,
                FlatValue::Int(i) => value(path, Value::Int(i))?,
            };
            out.insert(k.to_owned(), v);
        }
        return Ok(out);
    }
    let items = pickle::load_dict(&bytes).map_err(|source| TokenizeError::Pickle {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = DictMap::with_capacity_and_hasher(items.len(), Default::default());
    for (k, v) in items {
        let Value::String(key) = k else {
            return Err(TokenizeError::Dictionary {
                path: path.to_path_buf(),
                reason: format!("keys must be strings, found a {}", k.kind()),
            });
        };
        out.insert(key, value(path, v)?);
    }
    Ok(out)
}
