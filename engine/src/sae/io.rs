//! SAE folders in SAELens' layout: `cfg.json` and `sae_weights.safetensors` with `W_enc` [d_in, d_sae],
//! `b_enc` [d_sae], `W_dec` [d_sae, d_in], `b_dec` [d_in] (f32). `sae_lens.SAE.load_from_disk` reads
//! them; scinterp's own fields (hook, model, training summary) go in `metadata`, which SAELens keeps.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::TopKSae;

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";

/// A problem with an SAE folder, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct SaeFileError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl Into<String>) -> SaeFileError {
    SaeFileError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An SAE with its `metadata` (hook name, model, normalisation, training summary).
#[derive(Clone, Debug)]
pub struct SaeFolder {
    pub sae: TopKSae,
    pub metadata: Value,
}

impl SaeFolder {
    pub fn hook_name(&self) -> Option<&str> {
        self.metadata.get("hook_name").and_then(Value::as_str)
    }
}

/// Finds the SAE of `hook` under `dir`: `dir/<hook>/cfg.json`, or any subfolder whose cfg.json names
/// the hook in `metadata.hook_name`.
pub fn find_sae(dir: &Path, hook: &str) -> Result<SaeFolder, SaeFileError> {
    let direct = dir.join(hook);
    if direct.join(CFG_FILE).exists() {
        return load(&direct);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| SaeFileError {
        path: dir.to_path_buf(),
        reason: format!("cannot list: {e}"),
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        // Hidden folders are staging areas of unfinished saves, never SAEs to read.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.join(CFG_FILE).exists() {
            let folder = load(&path)?;
            if folder.hook_name() == Some(hook) {
                return Ok(folder);
            }
        }
    }
    Err(SaeFileError {
        path: dir.to_path_buf(),
        reason: format!(
            "no SAE for {hook} (expected {}/cfg.json or a folder whose cfg.json has metadata.hook_name = {hook}); \
             train one with `scinterp sae train --hook {hook}`",
            direct.display()
        ),
    })
}

/// An SAE folder that does not fit an activation store.
#[derive(Debug, thiserror::Error)]
pub enum SaeOnStoreError {
    #[error(transparent)]
    Sae(#[from] SaeFileError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{}: cfg.json names no hook (metadata.hook_name); pass --hook", .0.display())]
    NoHook(PathBuf),
    #[error("the SAE in {} reads d_in = {d_in} but {hook} of {} has width {width}; use an SAE trained on this model's hook", sae.display(), acts.display())]
    Width {
        sae: PathBuf,
        d_in: usize,
        hook: String,
        acts: PathBuf,
        width: usize,
    },
}

/// Opens an SAE folder and an activation store, picks the hook (given, or the SAE's hook_name) and
/// checks that the widths agree.
pub fn open_sae_on_store(
    sae_dir: &Path,
    acts: &Path,
    hook: Option<&str>,
) -> Result<(SaeFolder, crate::store::ActStore, crate::store::HookArray, String), SaeOnStoreError> {
    let folder = load(sae_dir)?;
    let store = crate::store::ActStore::open(acts)?;
    let hook_name = match (hook, folder.hook_name()) {
        (Some(h), _) => h.to_string(),
        (None, Some(h)) => h.to_string(),
        (None, None) => return Err(SaeOnStoreError::NoHook(sae_dir.to_path_buf())),
    };
    let array = store.hook(&hook_name)?;
    if array.d() != folder.sae.d_in {
        return Err(SaeOnStoreError::Width {
            sae: sae_dir.to_path_buf(),
            d_in: folder.sae.d_in,
            hook: hook_name,
            acts: acts.to_path_buf(),
            width: array.d(),
        });
    }
    Ok((folder, store, array, hook_name))
}

/// Writes `cfg.json` and `sae_weights.safetensors` into `dir` as one unit ([`save_with`]).
pub fn save(dir: &Path, sae: &TopKSae, metadata: &Value) -> Result<(), SaeFileError> {
    save_with(dir, sae, metadata, &[])
}

/// The hidden sibling folder where [`save_with`] stages an SAE folder (and `sae train` keeps its
/// checkpoint) before it is swapped into place: `.<name>.partial`.
pub fn staging_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sae".into());
    dir.with_file_name(format!(".{name}.partial"))
}

/// Writes the SAE folder `dir` (cfg.json, sae_weights.safetensors and the `extra` files) as one
/// unit: every file goes into [`staging_dir`], is fsynced, and the staged folder then replaces `dir`
/// in one step (an atomic exchange where the system has it). A kill at any moment leaves either the
/// old folder or the new one, never weights of one run beside the cfg.json of another; the staging
/// folder left by a kill is removed by the next save.
pub fn save_with(
    dir: &Path,
    sae: &TopKSae,
    metadata: &Value,
    extra: &[(&str, &[u8])],
) -> Result<(), SaeFileError> {
    let staging = staging_dir(dir);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| err(parent, format!("cannot create the folder: {e}")))?;
    }
    std::fs::create_dir_all(&staging)
        .map_err(|e| err(&staging, format!("cannot create the staging folder: {e}")))?;
    // Only the files of this save: a staged folder may still hold a training checkpoint.
    for name in [CFG_FILE, WEIGHTS_FILE] {
        let _ = std::fs::remove_file(staging.join(name));
    }
    let w_enc_t = transpose(&sae.w_enc, sae.d_sae, sae.d_in);
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
        ("W_enc", vec![sae.d_in, sae.d_sae], &w_enc_t),
        ("b_enc", vec![sae.d_sae], &sae.b_enc),
        ("W_dec", vec![sae.d_sae, sae.d_in], &sae.w_dec),
        ("b_dec", vec![sae.d_in], &sae.b_dec),
    ];
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map(|v| (name.to_string(), v))
                .map_err(|e| err(dir, format!("cannot build tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let weights_path = staging.join(WEIGHTS_FILE);
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| err(&weights_path, format!("cannot serialise: {e}")))?;
    write_synced(&weights_path, &bytes)?;

    let cfg = json!({
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": false,
        "metadata": metadata,
    });
    let cfg_path = staging.join(CFG_FILE);
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| err(&cfg_path, e.to_string()))?;
    write_synced(&cfg_path, text.as_bytes())?;
    for (name, bytes) in extra {
        write_synced(&staging.join(name), bytes)?;
    }
    // What the staged folder holds besides the SAE (a checkpoint) must not move into place.
    let keep: Vec<&str> = [CFG_FILE, WEIGHTS_FILE]
        .into_iter()
        .chain(extra.iter().map(|(n, _)| *n))
        .collect();
    if let Ok(entries) = std::fs::read_dir(&staging) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    crate::formats::atomic::sync_parent(&cfg_path);
    swap_into_place(&staging, dir)
}

/// Moves the folder `staged` to `dir`: an atomic exchange when `dir` exists (the old folder then
/// sits at `staged` and is removed), a rename otherwise.
fn swap_into_place(staged: &Path, dir: &Path) -> Result<(), SaeFileError> {
    if dir.exists() {
        if !matches!(crate::formats::atomic::exchange_dirs(staged, dir), Ok(true)) {
            // Systems without an atomic exchange: move the old folder aside first.
            let aside = staged.with_extension("old");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(dir, &aside)
                .map_err(|e| err(dir, format!("cannot move the old SAE aside: {e}")))?;
            std::fs::rename(staged, dir)
                .map_err(|e| err(dir, format!("cannot move the new SAE into place: {e}")))?;
            let _ = std::fs::remove_dir_all(&aside);
        } else {
            std::fs::remove_dir_all(staged)
                .map_err(|e| err(staged, format!("cannot remove the replaced SAE: {e}")))?;
        }
    } else {
        std::fs::rename(staged, dir).map_err(|e| err(dir, format!("cannot move the SAE into place: {e}")))?;
    }
    crate::formats::atomic::sync_parent(dir);
    Ok(())
}

/// Writes and fsyncs one file of a staged folder.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SaeFileError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            err(path, "the disk is full; free some space or choose another --out")
        } else {
            err(path, format!("cannot write: {e}"))
        }
    })
}

/// Reads an SAE folder written by scinterp or SAELens (TopK, f32, `apply_b_dec_to_input` true,
/// no activation normalisation left to apply).
pub fn load(dir: &Path) -> Result<SaeFolder, SaeFileError> {
    let cfg_path = dir.join(CFG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
        err(
            &cfg_path,
            format!("cannot read ({e}); --sae must be an SAE folder (cfg.json, sae_weights.safetensors)"),
        )
    })?;
    let cfg: Value =
        serde_json::from_str(&text).map_err(|e| err(&cfg_path, format!("not valid JSON: {e}")))?;
    let field = |name: &str| {
        cfg.get(name)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| err(&cfg_path, format!("has no integer `{name}`")))
    };
    let (d_in, d_sae, k) = (field("d_in")?, field("d_sae")?, field("k")?);
    let architecture = cfg.get("architecture").and_then(Value::as_str).unwrap_or("topk");
    if architecture != "topk" {
        return Err(err(
            &cfg_path,
            format!("architecture `{architecture}`: scinterp reads TopK SAEs only"),
        ));
    }
    if cfg.get("apply_b_dec_to_input").and_then(Value::as_bool) == Some(false) {
        return Err(err(
            &cfg_path,
            "apply_b_dec_to_input is false; fold b_dec into b_enc (b_enc −= b_dec·W_enc) and set it to true",
        ));
    }
    match cfg.get("normalize_activations").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(other) => {
            return Err(err(
                &cfg_path,
                format!("normalize_activations is `{other}`; fold the scaling into the weights first"),
            ))
        }
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| err(&weights_path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        err(
            &weights_path,
            format!("not a valid safetensors file (truncated?): {e}"),
        )
    })?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, SaeFileError> {
        let t = st
            .tensor(name)
            .map_err(|_| err(&weights_path, format!("has no tensor `{name}`")))?;
        if t.shape() != shape {
            return Err(err(
                &weights_path,
                format!(
                    "`{name}` is {:?}, but cfg.json (d_in {d_in}, d_sae {d_sae}) implies {shape:?}",
                    t.shape()
                ),
            ));
        }
        if t.dtype() != Dtype::F32 {
            return Err(err(
                &weights_path,
                format!("`{name}` is {:?}; scinterp reads f32 SAE weights", t.dtype()),
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    };
    let w_enc_t = get("W_enc", &[d_in, d_sae])?;
    let sae = TopKSae {
        d_in,
        d_sae,
        k,
        w_enc: transpose(&w_enc_t, d_in, d_sae),
        b_enc: get("b_enc", &[d_sae])?,
        w_dec: get("W_dec", &[d_sae, d_in])?,
        b_dec: get("b_dec", &[d_in])?,
    };
    sae.validate().map_err(|e| match e {
        super::SaeShapeError::NonFinite { .. } => err(&weights_path, e.to_string()),
        _ => err(&cfg_path, e.to_string()),
    })?;
    let metadata = cfg.get("metadata").cloned().unwrap_or_else(|| json!({}));
    Ok(SaeFolder { sae, metadata })
}

/// `[rows, cols]` → `[cols, rows]`, row-major.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_files() {
        let sae = crate::sae::tests::random_sae(6, 10, 3, 4);
        let dir = tempfile::tempdir().unwrap();
        save(
            dir.path(),
            &sae,
            &json!({"hook_name": "blocks.1.hook_resid_post"}),
        )
        .unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.sae, sae);
        assert_eq!(back.hook_name(), Some("blocks.1.hook_resid_post"));

        let weights = dir.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.path.ends_with(WEIGHTS_FILE) && e.reason.contains("truncated"),
            "{e}"
        );

        save(dir.path(), &sae, &json!({})).unwrap();
        let cfg_path = dir.path().join(CFG_FILE);
        let text = std::fs::read_to_string(&cfg_path)
            .unwrap()
            .replace("\"d_in\": 6", "\"d_in\": 7");
        std::fs::write(&cfg_path, text).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.reason.contains("d_in 7"), "{e}");
    }
}
