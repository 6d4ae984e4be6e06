//! `scinterp extract --shard i/n` + `scinterp extract merge`: the merged store equals one unsharded
//! run byte for byte (every file), on real cells (the embedded pbmc68k cells and Geneformer-shaped
//! model); a merge resumes; shards that do not belong together are refused.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails_with, repo_root, scinterp};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scinterp failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const STORE_FILES: [&str; 5] = [
    "manifest.json",
    "rows.npy",
    "hook_embed.npy",
    "blocks.0.hook_resid_post.npy",
    "blocks.2.hook_resid_post.npy",
];

fn tokens(tmp: &Path) -> PathBuf {
    let assets = repo_root().join("models/assets");
    let out = tmp.join("tokens");
    ok(&scinterp(&[
        "tokenize",
        "--input",
        s(&assets.join("cells/pbmc68k.h5ad.gz")),
        "--model-kind",
        "geneformer-v2",
        "--dictionaries",
        s(&assets.join("geneformer")),
        "--gene-ids",
        "symbol",
        "--max-len",
        "256",
        "--out",
        s(&out),
    ]));
    out
}

#[test]
fn sharded_extract_merges_to_the_unsharded_store_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens(tmp.path());
    let model = repo_root().join("models/assets/geneformer");
    let extract = |out: &Path, extra: &[&str]| {
        scinterp(
            &[
                &[
                    "--threads",
                    "2",
                    "extract",
                    "--model",
                    s(&model),
                    "--input",
                    s(&tokens),
                    "--hooks",
                    "hook_embed,blocks.0.hook_resid_post,blocks.2.hook_resid_post",
                    "--max-batch-tokens",
                    "8192",
                    "--device",
                    "cpu",
                    "--json",
                    "--out",
                    s(out),
                ],
                extra,
            ]
            .concat(),
        )
    };
    let full = tmp.path().join("full");
    let summary: serde_json::Value = serde_json::from_str(&ok(&extract(&full, &[]))).unwrap();
    let n_cells = summary["n_cells"].as_u64().unwrap();
    assert_eq!(n_cells, 700);

    // Three shards, extracted out of order; each holds a run of cells, together all of them.
    let shards: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("shard{i}"))).collect();
    let mut cells = 0;
    for i in [2, 0, 1] {
        let out: serde_json::Value =
            serde_json::from_str(&ok(&extract(&shards[i], &["--shard", &format!("{i}/3")]))).unwrap();
        let n = out["n_cells"].as_u64().unwrap();
        assert!(n > 0 && n < n_cells, "shard {i} has {n} cells");
        cells += n;
    }
    assert_eq!(cells, n_cells);
    let list = shards.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
    let merged = tmp.path().join("merged");
    ok(&scinterp(&[
        "extract",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&merged),
    ]));
    for name in STORE_FILES {
        assert!(
            std::fs::read(full.join(name)).unwrap() == std::fs::read(merged.join(name)).unwrap(),
            "{name} of the merged store differs from the unsharded run"
        );
    }
    // A merge that was interrupted after the first shard (its manifest says so) finishes the same.
    let resumed = tmp.path().join("resumed");
    ok(&scinterp(&[
        "extract",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&resumed),
    ]));
    let path = resumed.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let shard0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shards[0].join("manifest.json")).unwrap()).unwrap();
    m["cells_complete"] = shard0["n_cells"].clone();
    m["rows_complete"] = shard0["n_rows"].clone();
    m["complete"] = false.into();
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    // Damage what is after the first shard, so only a real rewrite restores it.
    let hook = resumed.join("blocks.2.hook_resid_post.npy");
    let mut bytes = std::fs::read(&hook).unwrap();
    let len = bytes.len();
    bytes[len - 64..].fill(0x55);
    std::fs::write(&hook, bytes).unwrap();
    let out: serde_json::Value = serde_json::from_str(&ok(&scinterp(&[
        "extract",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&resumed),
        "--json",
    ])))
    .unwrap();
    assert_eq!(out["resumed_from_cell"], shard0["n_cells"]);
    for name in STORE_FILES {
        assert!(
            std::fs::read(full.join(name)).unwrap() == std::fs::read(resumed.join(name)).unwrap(),
            "{name} differs after a resumed merge"
        );
    }

    // Refusals: a shard missing, a shard given twice, an unsharded store, too many shards.
    let two = format!("{},{}", s(&shards[0]), s(&shards[1]));
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &two,
            "--out",
            s(&tmp.path().join("x")),
        ]),
        &["exactly once"],
    );
    let twice = format!("{},{},{}", s(&shards[0]), s(&shards[1]), s(&shards[1]));
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &twice,
            "--out",
            s(&tmp.path().join("x")),
        ]),
        &["exactly once"],
    );
    let with_full = format!("{},{}", s(&shards[0]), s(&full));
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &with_full,
            "--out",
            s(&tmp.path().join("x")),
        ]),
        &["not a shard store", "--shard i/n"],
    );
    assert!(
        !tmp.path().join("x").exists(),
        "a refused merge must write nothing"
    );
    assert_fails_with(
        &extract(&tmp.path().join("y"), &["--shard", "0/100000"]),
        &["--shard 0/100000", "batches"],
    );
    assert_fails_with(
        &extract(&tmp.path().join("y"), &["--shard", "3/3"]),
        &["--shard", "0 ≤ i < n"],
    );
}
