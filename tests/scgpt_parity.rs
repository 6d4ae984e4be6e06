//! Parity of the scGPT forward pass with a torch-only rebuild (`nn.TransformerEncoderLayer`, f32, eval,
//! fast path off) on the fixtures of tests/reference/make_scgpt_fixtures.py: every hook, the cell
//! embedding and both decoders; both attention key layouts and both file formats; the real width with
//! the real 60,697-token vocabulary; batching; and the loader's refusals.

mod common;

use std::path::Path;

use common::{real_positions, real_rows, relative_error, scgpt_fixture, ExpectedFile};
use scinterp_engine::{run, Encoder, HookPlan, HookPoint, Matrix, PackedBatch, Start};
use scinterp_models::checkpoint::{write_safetensors, Checkpoint, TensorToWrite};
use scinterp_models::scgpt::{Scgpt, ScgptLoadOptions};

const TOLERANCE: f64 = 1e-4;

fn load(dir: &Path) -> Scgpt {
    Scgpt::load(dir, ScgptLoadOptions { with_head: true }).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture's cells: gene ids and values, ragged.
fn cells_of(expected: &ExpectedFile) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let ids = expected.get("gene_ids");
    let values = expected.get("values");
    let max_len = ids.shape[1];
    let lengths = &expected.get("lengths").values;
    let mut tokens = Vec::new();
    let mut vals = Vec::new();
    for (c, &len) in lengths.iter().enumerate() {
        let r = c * max_len..c * max_len + len as usize;
        tokens.push(ids.values[r.clone()].iter().map(|&v| v as u32).collect());
        vals.push(values.values[r].iter().map(|&v| v as f32).collect());
    }
    (tokens, vals)
}

fn batch_of(tokens: &[Vec<u32>], values: &[Vec<f32>]) -> PackedBatch {
    PackedBatch::from_cells(tokens)
        .unwrap()
        .with_values(values.concat())
        .unwrap()
}

/// Runs every hook and the heads on the fixture's cells and compares all that the expected file holds.
/// Returns how many tensors were compared.
fn check_against_torch(model: &Scgpt, expected: &ExpectedFile, label: &str) -> usize {
    let (tokens, values) = cells_of(expected);
    let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    let batch = batch_of(&tokens, &values);
    let hooks = HookPoint::all(model.dims().n_layers);
    let plan = HookPlan::new().capture_many(hooks.iter().copied());
    let out = run(model, &batch, &plan, Start::Embed, true).unwrap();
    let mut compared = 0;
    let mut check = |name: &str, got: &[f32], want: &[f64]| {
        let err = relative_error(got, want);
        assert!(err <= TOLERANCE, "{label}: {name} differs from torch by {err:e}");
        compared += 1;
    };
    for hook in hooks {
        let name = hook.to_string();
        if expected.has(&name) {
            let want = real_rows(expected.get(&name), &lengths);
            check(&name, out.captures.get(hook).unwrap().as_slice(), &want);
        }
    }
    let cell_embedding = model.cell_embedding(&out.final_state, &batch).unwrap();
    check(
        "cell_embedding",
        cell_embedding.as_slice(),
        &expected.get("cell_embedding").values,
    );
    let head = out.head.expect("head");
    for (column, name) in ["expr_pred", "mvc_pred"].into_iter().enumerate() {
        let got: Vec<f32> = head.as_slice().chunks_exact(2).map(|r| r[column]).collect();
        check(name, &got, &real_positions(expected.get(name), &lengths));
    }
    compared
}

#[test]
fn tiny_flash_layout_best_model_pt_matches_torch_on_every_hook_and_head() {
    let dir = scgpt_fixture("tiny");
    let model = load(&dir);
    assert!(model.weights_path().ends_with("best_model.pt"));
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let n_layers = model.dims().n_layers;
    assert_eq!(
        check_against_torch(&model, &expected, "tiny"),
        1 + 4 * n_layers + 3,
        "every hook, the cell embedding and both heads are in the fixture"
    );
}

#[test]
fn torch_layout_safetensors_gives_the_same_model() {
    let expected = ExpectedFile::open(&scgpt_fixture("tiny").join("expected.safetensors"));
    let model = load(&scgpt_fixture("tiny_torch_layout"));
    assert!(model.weights_path().ends_with("model.safetensors"));
    check_against_torch(&model, &expected, "tiny_torch_layout");
}

#[test]
fn real_width_and_real_vocabulary_match_torch() {
    let dir = common::scgpt_width512_dir();
    let model = load(dir.path());
    assert_eq!(model.dims().vocab_size, 60_697);
    assert_eq!(model.dims().d_model, 512);
    assert_eq!((model.pad_id(), model.cls_id()), (60_694, 60_695));
    let expected = ExpectedFile::open(&scgpt_fixture("width512").join("expected.safetensors"));
    let compared = check_against_torch(&model, &expected, "width512");
    assert!(compared >= 1 + model.dims().n_layers + 3);
}

#[test]
fn batching_does_not_change_real_positions() {
    let dir = scgpt_fixture("tiny");
    let model = load(&dir);
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let (tokens, values) = cells_of(&expected);
    let last = HookPoint::ResidPost(model.dims().n_layers - 1);
    let plan = HookPlan::new().capture(last);
    let together = run(&model, &batch_of(&tokens, &values), &plan, Start::Embed, true).unwrap();
    let together_state = together.captures.get(last).unwrap();
    let mut offset = 0;
    for (t, v) in tokens.iter().zip(&values) {
        let alone = run(
            &model,
            &batch_of(std::slice::from_ref(t), std::slice::from_ref(v)),
            &plan,
            Start::Embed,
            true,
        )
        .unwrap();
        let rows = together_state.slice_rows(offset, offset + t.len());
        let diff = rows.max_abs_diff(alone.captures.get(last).unwrap());
        assert!(
            diff <= 1e-5,
            "a cell run alone differs from the batch by {diff:e}"
        );
        offset += t.len();
    }
}

#[test]
fn tail_replay_from_every_layer_equals_the_full_pass() {
    let dir = scgpt_fixture("tiny");
    let model = load(&dir);
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let (tokens, values) = cells_of(&expected);
    let batch = batch_of(&tokens, &values);
    let n = model.dims().n_layers;
    let plan = HookPlan::new()
        .capture(HookPoint::Embed)
        .capture_many((0..n).map(HookPoint::ResidPost));
    let full = run(&model, &batch, &plan, Start::Embed, true).unwrap();
    for layer in 0..=n {
        let input = if layer == 0 {
            HookPoint::Embed
        } else {
            HookPoint::ResidPost(layer - 1)
        };
        let state: Matrix = full.captures.get(input).unwrap().clone();
        let tail = run(
            &model,
            &batch,
            &HookPlan::new(),
            Start::BlockInput { layer, state },
            true,
        )
        .unwrap();
        assert_eq!(
            tail.final_state.max_abs_diff(&full.final_state),
            0.0,
            "from layer {layer}"
        );
        assert_eq!(tail.head.unwrap().max_abs_diff(full.head.as_ref().unwrap()), 0.0);
    }
}

#[test]
fn a_batch_without_values_or_with_unknown_genes_is_refused() {
    let model = load(&scgpt_fixture("tiny"));
    let plan = HookPlan::new();
    let no_values = PackedBatch::from_cells(&[vec![1u32, 2]]).unwrap();
    let err = run(&model, &no_values, &plan, Start::Embed, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expression value"), "{err}");
    let vocab = model.dims().vocab_size as u32;
    let unknown = batch_of(&[vec![1, vocab]], &[vec![-2.0, 3.0]]);
    let err = run(&model, &unknown, &plan, Start::Embed, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cell 0 position 1") && err.contains("outside the vocabulary"),
        "{err}"
    );
}

/// Copies the tiny model into a folder as safetensors after `edit` changes its tensor list.
fn edited_copy(edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> tempfile::TempDir {
    let src = scgpt_fixture("tiny");
    let checkpoint = Checkpoint::open(&src.join("best_model.pt")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = checkpoint
        .names()
        .map(|n| {
            let shape = checkpoint.entry(n).unwrap().shape.clone();
            (n.to_string(), shape, checkpoint.to_f32(n).unwrap())
        })
        .collect();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    for f in ["args.json", "vocab.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let views: Vec<TensorToWrite<'_>> = tensors
        .iter()
        .map(|(name, shape, data)| TensorToWrite {
            name: name.clone(),
            dtype: safetensors::Dtype::F32,
            shape: shape.clone(),
            bytes: bytemuck::cast_slice(data),
        })
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &views, None).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    Scgpt::load(dir, ScgptLoadOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn the_loader_lists_every_missing_misshaped_and_unexpected_tensor_in_one_error() {
    let dir = edited_copy(|t| {
        t.retain(|(n, _, _)| n != "transformer_encoder.layers.1.norm2.bias");
        t.retain(|(n, _, _)| n != "decoder.fc.4.weight");
        for (n, shape, data) in t.iter_mut() {
            if n == "transformer_encoder.layers.0.linear1.weight" {
                data.truncate(data.len() / 2);
                shape[0] /= 2;
            }
        }
        t.push(("batch_encoder.embedding.weight".into(), vec![2, 4], vec![0.0; 8]));
    });
    let err = load_err(dir.path());
    for needle in [
        "model.safetensors",
        "4 problems",
        "missing tensor `transformer_encoder.layers.1.norm2.bias`",
        "missing tensor `decoder.fc.4.weight`",
        "`transformer_encoder.layers.0.linear1.weight` has shape",
        "unexpected tensor `batch_encoder.embedding.weight`",
    ] {
        assert!(err.contains(needle), "lacks `{needle}`: {err}");
    }
}

#[test]
fn both_spellings_of_one_tensor_are_refused_and_aliases_accepted() {
    let both = edited_copy(|t| {
        let wqkv = t
            .iter()
            .find(|(n, _, _)| n == "transformer_encoder.layers.0.self_attn.Wqkv.weight")
            .unwrap()
            .clone();
        t.push((
            "transformer_encoder.layers.0.self_attn.in_proj_weight".into(),
            wqkv.1,
            wqkv.2,
        ));
    });
    let err = load_err(both.path());
    assert!(err.contains("spellings of the same tensor"), "{err}");

    // scGPT's `_impl.` names (an older flash-attention wrapper) load to the same model.
    let impl_names = edited_copy(|t| {
        for (n, _, _) in t.iter_mut() {
            *n = n
                .replace("self_attn.Wqkv.", "self_attn._impl.Wqkv.")
                .replace("self_attn.out_proj.", "self_attn._impl.out_proj.");
        }
    });
    let expected = ExpectedFile::open(&scgpt_fixture("tiny").join("expected.safetensors"));
    check_against_torch(&load(impl_names.path()), &expected, "_impl names");
}

#[test]
fn folder_problems_name_the_file_and_the_fix() {
    let src = scgpt_fixture("tiny");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("args.json"), dir.path().join("args.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("vocab.json") && err.contains("missing"), "{err}");

    std::fs::copy(src.join("vocab.json"), dir.path().join("vocab.json")).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("holds no weights") && err.contains("best_model.pt"),
        "{err}"
    );

    let bytes = std::fs::read(src.join("best_model.pt")).unwrap();
    std::fs::write(dir.path().join("best_model.pt"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("best_model.pt"), "{err}");

    // args.json of another width than the weights.
    std::fs::write(dir.path().join("best_model.pt"), &bytes).unwrap();
    let args = std::fs::read_to_string(src.join("args.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&args).unwrap();
    value["d_hid"] = serde_json::json!(value["d_hid"].as_u64().unwrap() * 2);
    std::fs::write(dir.path().join("args.json"), value.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("does not match its config") && err.contains("linear1.weight"),
        "{err}"
    );

    value["input_emb_style"] = serde_json::json!("category");
    std::fs::write(dir.path().join("args.json"), value.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("args.json") && err.contains("continuous"), "{err}");
}
