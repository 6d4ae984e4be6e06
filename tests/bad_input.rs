//! The bad-input catalogue (issue 21 item 1; issue 23 item 7 for export and apply): every reader and
//! command given a deliberately bad file or flag. Each case runs the `scinterp` binary and asserts a
//! non-zero exit, no panic, exactly one `error:` line that names the file or flag at fault (the needles),
//! no cause printed twice, and that nothing is half-written: the case's output does not exist afterwards,
//! or an existing one is byte-for-byte unchanged. A few cases check a correct result instead.
//!
//! Inputs are small: the embedded assets (models/assets), the committed fixtures (tests/fixtures) and files
//! written here into a temporary folder. Every case runs even when an earlier one fails; the test then
//! lists all failures. Run it alone with `cargo test --test bad_input -- --nocapture` (it prints the
//! number of cases per command).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{as_strs, assets, files, fixture, fixtures, pbmc68k_tokenize_args, scinterp};

/// A path as an owned argument (the cases keep their arguments as Strings).
fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// What a case's output must look like afterwards.
enum Guard {
    /// Must not exist (nothing half-written).
    Absent(PathBuf),
    /// Existed before; must hold the same bytes.
    Unchanged(PathBuf, BTreeMap<String, Vec<u8>>),
}

#[derive(Default)]
struct Catalogue {
    failures: Vec<String>,
    per_command: BTreeMap<&'static str, usize>,
    names: std::collections::HashSet<String>,
}

struct Case<'a> {
    cat: &'a mut Catalogue,
    command: &'static str,
    name: String,
    args: Vec<String>,
    needles: Vec<String>,
    lacks: Vec<String>,
    guards: Vec<Guard>,
}

impl Catalogue {
    fn case(&mut self, command: &'static str, name: &str) -> Case<'_> {
        assert!(
            self.names.insert(format!("{command}/{name}")),
            "case {name} twice"
        );
        Case {
            cat: self,
            command,
            name: name.to_string(),
            args: Vec::new(),
            needles: Vec::new(),
            lacks: Vec::new(),
            guards: Vec::new(),
        }
    }

    fn fail(&mut self, command: &str, name: &str, why: String) {
        self.failures.push(format!("[{command}] {name}: {why}"));
    }
}

impl Case<'_> {
    fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args = args.iter().map(|a| a.as_ref().to_string()).collect();
        self
    }
    /// The error line must contain each of these.
    fn says(mut self, needles: &[&str]) -> Self {
        self.needles = needles.iter().map(|n| n.to_string()).collect();
        self
    }
    /// The error line must not contain these (e.g. a temporary file's name).
    fn never(mut self, lacks: &[&str]) -> Self {
        self.lacks = lacks.iter().map(|n| n.to_string()).collect();
        self
    }
    fn absent(mut self, p: &Path) -> Self {
        assert!(
            !p.exists(),
            "{}: {} exists before the case",
            self.name,
            p.display()
        );
        self.guards.push(Guard::Absent(p.to_path_buf()));
        self
    }
    fn unchanged(mut self, p: &Path) -> Self {
        assert!(
            p.exists(),
            "{}: {} must exist before the case",
            self.name,
            p.display()
        );
        self.guards.push(Guard::Unchanged(p.to_path_buf(), files(p)));
        self
    }

    /// Runs the command and checks that it failed cleanly.
    fn fails(self) {
        let out = scinterp(&as_strs(&self.args));
        *self.cat.per_command.entry(self.command).or_default() += 1;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut why = Vec::new();
        if out.status.success() {
            why.push("exited 0".to_string());
        }
        if stderr.contains("panicked") {
            why.push("panicked".to_string());
        }
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("error:"))
            .collect();
        if errors.len() != 1 {
            why.push(format!("{} `error:` lines", errors.len()));
        }
        let error = errors.first().copied().unwrap_or("");
        for n in &self.needles {
            if !error.contains(n.as_str()) {
                why.push(format!("error lacks `{n}`"));
            }
        }
        for n in &self.lacks {
            if error.contains(n.as_str()) {
                why.push(format!("error contains `{n}`"));
            }
        }
        if error.matches("(os error").count() > 1 {
            why.push("the cause is printed twice".into());
        }
        for g in &self.guards {
            match g {
                Guard::Absent(p) if p.exists() => why.push(format!("{} was left behind", p.display())),
                Guard::Unchanged(p, before) if files(p) != *before => {
                    why.push(format!("{} was changed", p.display()))
                }
                _ => {}
            }
        }
        if !why.is_empty() {
            let (command, name) = (self.command, self.name.clone());
            self.cat
                .fail(command, &name, format!("{}; stderr:\n{stderr}", why.join("; ")));
        }
    }

    /// Runs the command, which must succeed (for the cases whose right answer is a result).
    fn succeeds(self) -> std::process::Output {
        let out = scinterp(&as_strs(&self.args));
        *self.cat.per_command.entry(self.command).or_default() += 1;
        if !out.status.success() {
            let (command, name) = (self.command, self.name.clone());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            self.cat.fail(command, &name, format!("failed: {stderr}"));
        }
        out
    }
}

/// Runs `scinterp` for a fixture, which must succeed.
fn make(args: &[&str]) {
    let out = scinterp(args);
    assert!(
        out.status.success(),
        "fixture step {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The data offset of an .npy file (after its header).
fn npy_data_offset(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    match bytes[6] {
        1 => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        _ => 12 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
    }
}

/// Copies folder `from` to `to` (files only, one level).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// A copy of SAE folder `from` whose `W_enc` value `index` is `value`.
fn sae_with_value(from: &Path, to: &Path, index: usize, value: f32) {
    copy_dir(from, to);
    let path = to.join("sae_weights.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["W_enc"]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

/// Everything the cases read: built once.
struct Inputs {
    tmp: tempfile::TempDir,
    /// tiny_v2 Geneformer (4 layers, d 128, 64 positions, vocab 96) and its 16-cell token store.
    tiny: PathBuf,
    tokens: PathBuf,
    /// SAEs (d_sae 64, k 4) at blocks.0 and blocks.2 of tiny_v2.
    saes: PathBuf,
    /// f32 activation store of tokens at both hooks.
    acts: PathBuf,
    /// pbmc68k tokenized for Geneformer at 400 tokens: too long for the embedded model (256).
    long_tokens: PathBuf,
    /// An exported scGPT tool (weights-qk, 60 HVGs) and a second one (other seed).
    tool: PathBuf,
    other_tool: PathBuf,
    /// Two trace shards (0/2, 1/2) of features 0..4, and one of another trace.
    shards: [PathBuf; 2],
    other_shard: PathBuf,
}

impl Inputs {
    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

fn build_inputs() -> Inputs {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let tiny = fixture("tiny_v2");
    let tokens = fixtures().join("trace/tokens");
    let saes = fixtures().join("trace/saes");
    let acts = t.join("acts");
    make(&[
        "extract",
        "--model",
        &s(&tiny),
        "--input",
        &s(&tokens),
        "--hooks",
        "blocks.0.hook_resid_post,blocks.2.hook_resid_post",
        "--dtype",
        "f32",
        "--out",
        &s(&acts),
    ]);
    let long_tokens = t.join("long_gf");
    make(&as_strs(&pbmc68k_tokenize_args(
        &long_tokens,
        &["--max-len", "400"],
    )));
    let export = |out: &Path, seed: &str| {
        make(&[
            "export",
            "operator",
            "--model",
            &s(&assets().join("scgpt")),
            "--input",
            &s(&assets().join("cells/pbmc68k.h5ad.gz")),
            "--labels",
            "bulk_labels",
            "--root",
            "0",
            "--construction",
            "weights-qk",
            "--hvg",
            "60",
            "--seed",
            seed,
            "--out",
            &s(out),
        ])
    };
    let (tool, other_tool) = (t.join("tool"), t.join("other_tool"));
    export(&tool, "0");
    export(&other_tool, "1");
    let trace = |features: &str, shard: &str, out: &Path| {
        make(&[
            "trace",
            "--model",
            &s(&tiny),
            "--input",
            &s(&tokens),
            "--saes",
            &s(&saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--targets",
            "blocks.2.hook_resid_post",
            "--features",
            features,
            "--cells",
            "8",
            "--shard",
            shard,
            "--out",
            &s(out),
        ])
    };
    let shards = [t.join("shard0.bin"), t.join("shard1.bin")];
    trace("0,1,2,3", "0/2", &shards[0]);
    trace("0,1,2,3", "1/2", &shards[1]);
    let other_shard = t.join("other_shard1.bin");
    trace("0,1,2,5", "1/2", &other_shard);
    Inputs {
        tmp,
        tiny,
        tokens,
        saes,
        acts,
        long_tokens,
        tool,
        other_tool,
        shards,
        other_shard,
    }
}

fn tokenize_cases(cat: &mut Catalogue, i: &Inputs) {
    let pbmc = s(&assets().join("cells/pbmc68k.h5ad.gz"));
    let paul15 = s(&assets().join("cells/paul15.h5ad.gz"));
    let dicts = s(&assets().join("geneformer"));
    let vocab = s(&assets().join("scgpt"));
    let gf = |input: &str, out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "tokenize",
            "--input",
            input,
            "--model-kind",
            "geneformer-v2",
            "--dictionaries",
            &dicts,
            "--gene-ids",
            "symbol",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let sg = |input: &str, out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "tokenize",
            "--input",
            input,
            "--model-kind",
            "scgpt",
            "--vocab",
            &vocab,
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let out = i.p("tok_out");
    let nope = s(&i.p("nope.h5ad"));
    cat.case("tokenize", "missing input file")
        .args(&gf(&nope, &out, &[]))
        .says(&["nope.h5ad", "no such file"])
        .absent(&out)
        .fails();
    let config = s(&assets().join("geneformer/config.json"));
    cat.case("tokenize", "unknown input format")
        .args(&gf(&config, &out, &[]))
        .says(&["config.json", "unknown input format"])
        .absent(&out)
        .fails();
    let gz = std::fs::read(assets().join("cells/pbmc68k.h5ad.gz")).unwrap();
    let truncated_gz = i.p("truncated.h5ad.gz");
    std::fs::write(&truncated_gz, &gz[..gz.len() / 3]).unwrap();
    cat.case("tokenize", "truncated gzip")
        .args(&sg(&s(&truncated_gz), &out, &[]))
        .says(&["truncated.h5ad.gz", "truncated or corrupt"])
        .absent(&out)
        .fails();
    let h5 = std::fs::read(fixtures().join("cells/csr_plain.h5ad")).unwrap();
    let truncated = i.p("truncated.h5ad");
    std::fs::write(&truncated, &h5[..h5.len() / 2]).unwrap();
    cat.case("tokenize", "truncated h5ad")
        .args(&sg(&s(&truncated), &out, &[]))
        .says(&["truncated.h5ad", "HDF5"])
        .absent(&out)
        .fails();
    let text = i.p("text.h5ad");
    std::fs::write(&text, "cell,gene\n").unwrap();
    cat.case("tokenize", "text file named .h5ad")
        .args(&sg(&s(&text), &out, &[]))
        .says(&["text.h5ad", "not a readable HDF5 file"])
        .absent(&out)
        .fails();
    // Messages about a gzipped input name it, not its decompressed temporary copy.
    cat.case("tokenize", "gzipped h5ad: missing layer")
        .args(&gf(&pbmc, &out, &["--layer", "nope"]))
        .says(&["pbmc68k.h5ad.gz", "no layer `nope`", "--layer"])
        .never(&["/.tmp"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "gzipped h5ad: missing gene id column")
        .args(&gf(&pbmc, &out, &["--gene-id-column", "nope"]))
        .says(&["pbmc68k.h5ad.gz", "no column `nope`"])
        .never(&["/.tmp"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "--use-raw without raw")
        .args(&gf(&pbmc, &out, &["--use-raw"]))
        .says(&["pbmc68k.h5ad.gz", "raw/X", "drop --use-raw"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "missing obs column")
        .args(&gf(&pbmc, &out, &["--obs-columns", "nope"]))
        .says(&["pbmc68k.h5ad.gz", "obs has no column `nope`", "bulk_labels"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "--max-len 1 (Geneformer)")
        .args(&gf(&pbmc, &out, &["--max-len", "1"]))
        .says(&["--max-len 1", "3..=4096"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "--max-len too large (Geneformer)")
        .args(&gf(&pbmc, &out, &["--max-len", "99999"]))
        .says(&["--max-len 99999", "3..=4096"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "--max-len 1 (scGPT)")
        .args(&sg(&pbmc, &out, &["--max-len", "1"]))
        .says(&["--max-len 1", "at least 2"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "unknown --model-kind")
        .args(&[
            "tokenize",
            "--input",
            &pbmc,
            "--model-kind",
            "geneformer-v3",
            "--out",
            &s(&out),
        ])
        .says(&["geneformer-v3", "--model-kind"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "unknown --gene-ids")
        .args(&[
            "tokenize",
            "--input",
            &pbmc,
            "--model-kind",
            "geneformer-v2",
            "--dictionaries",
            &dicts,
            "--gene-ids",
            "entrez",
            "--out",
            &s(&out),
        ])
        .says(&["entrez", "--gene-ids"])
        .absent(&out)
        .fails();
    let empty_dir = i.p("empty_dir");
    std::fs::create_dir_all(&empty_dir).unwrap();
    cat.case("tokenize", "dictionary folder without the pickles")
        .args(&[
            "tokenize",
            "--input",
            &pbmc,
            "--model-kind",
            "geneformer-v2",
            "--dictionaries",
            &s(&empty_dir),
            "--gene-ids",
            "symbol",
            "--out",
            &s(&out),
        ])
        .says(&["token_dictionary_gc104M.pkl"])
        .absent(&out)
        .fails();
    // Mouse symbols (Gata1) would match human ones by case alone: refused, naming --orthologs.
    cat.case("tokenize", "mouse cells without --orthologs (Geneformer)")
        .args(&gf(&paul15, &out, &[]))
        .says(&["paul15.h5ad.gz", "mouse", "--orthologs"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "mouse cells without --orthologs (scGPT)")
        .args(&sg(&paul15, &out, &[]))
        .says(&["paul15.h5ad.gz", "mouse", "--orthologs"])
        .absent(&out)
        .fails();
    let missing_table = s(&i.p("orthologs.csv"));
    cat.case("tokenize", "missing ortholog table")
        .args(&gf(&paul15, &out, &["--orthologs", &missing_table]))
        .says(&["orthologs.csv"])
        .absent(&out)
        .fails();
    let loom = s(&fixtures().join("cells/cells.loom"));
    cat.case("tokenize", "loom: unknown row attribute")
        .args(&sg(&loom, &out, &["--gene-id-column", "nope"]))
        .says(&["cells.loom", "no row attribute `nope`", "Gene"])
        .absent(&out)
        .fails();
    cat.case("tokenize", "loom: no gene maps to the vocabulary")
        .args(&sg(&loom, &out, &[]))
        .says(&["cells.loom", "only 0 of 40 genes map", "--orthologs"])
        .absent(&out)
        .fails();
    // 10x folders: genes the scGPT vocabulary knows.
    let tenx = |name: &str, mtx: &str, barcodes: bool| -> String {
        let dir = i.p(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("matrix.mtx"), mtx).unwrap();
        std::fs::write(
            dir.join("features.tsv"),
            "ENSG00000115977\tAAK1\tGene Expression\nENSG00000064687\tABCA3\tGene Expression\n\
             ENSG00000085563\tABCB1\tGene Expression\n",
        )
        .unwrap();
        if barcodes {
            std::fs::write(dir.join("barcodes.tsv"), "AAAC-1\nAAAG-1\n").unwrap();
        }
        s(&dir)
    };
    let header = "%%MatrixMarket matrix coordinate integer general\n3 2 3\n";
    let oob = tenx("tenx_oob", &format!("{header}1 1 5\n2 1 3\n4 2 9\n"), true);
    cat.case("tokenize", "10x: index out of range")
        .args(&sg(&oob, &out, &["--gene-ids", "symbol"]))
        .says(&["matrix.mtx", "line 5", "out of range"])
        .absent(&out)
        .fails();
    let no_barcodes = tenx("tenx_nobar", &format!("{header}1 1 5\n2 1 3\n3 2 9\n"), false);
    cat.case("tokenize", "10x: no barcodes file")
        .args(&sg(&no_barcodes, &out, &["--gene-ids", "symbol"]))
        .says(&["barcodes.tsv", "missing"])
        .absent(&out)
        .fails();
    let real = tenx(
        "tenx_real",
        "%%MatrixMarket matrix coordinate real general\n3 2 3\n1 1 0.5\n2 1 1.3\n3 2 2.2\n",
        true,
    );
    // (scGPT bins any non-negative values; Geneformer ranks counts and refuses anything else.)
    cat.case("tokenize", "10x: normalised values, not counts")
        .args(&gf(&real, &out, &[]))
        .says(&["tenx_real", "does not hold raw counts", "--allow-normalized"])
        .absent(&out)
        .fails();
    // An existing store is kept unless --overwrite.
    let store = i.p("tok_store");
    make(&as_strs(&sg(&pbmc, &store, &[])));
    cat.case("tokenize", "existing store without --overwrite")
        .args(&sg(&pbmc, &store, &["--max-len", "100"]))
        .says(&["tok_store", "--overwrite"])
        .unchanged(&store)
        .fails();
}

fn forward_extract_cases(cat: &mut Catalogue, i: &Inputs) {
    let tiny = s(&i.tiny);
    let tokens = s(&i.tokens);
    let fwd_out = i.p("fwd.safetensors");
    let forward = |model: &str, input: &str| -> Vec<String> {
        [
            "forward",
            "--model",
            model,
            "--input",
            input,
            "--hooks",
            "all",
            "--out",
            &s(&fwd_out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    cat.case("forward", "model folder missing")
        .args(&forward(&s(&i.p("no_model")), &tokens))
        .says(&["no_model", "not a folder"])
        .absent(&fwd_out)
        .fails();
    let json = |name: &str, text: &str| {
        let p = i.p(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    cat.case("forward", "token id outside the vocabulary")
        .args(&forward(
            &tiny,
            &json("oov.json", r#"{"input_ids": [[2, 5, 3], [2, 96, 3]]}"#),
        ))
        .says(&["cell 1 position 1", "token id 96", "vocabulary"])
        .absent(&fwd_out)
        .fails();
    let long: Vec<String> = (0..65).map(|k| (4 + k % 90).to_string()).collect();
    let long = json(
        "long.json",
        &format!(r#"{{"input_ids": [[{}]]}}"#, long.join(",")),
    );
    cat.case("forward", "cell longer than the model's positions")
        .args(&forward(&tiny, &long))
        .says(&["long.json", "65 tokens", "at most 64", "--max-len 64"])
        .absent(&fwd_out)
        .fails();
    cat.case("forward", "not JSON")
        .args(&forward(&tiny, &json("bad.json", "{\"input_ids\": [[2, 5")))
        .says(&["bad.json", "not valid JSON"])
        .absent(&fwd_out)
        .fails();
    cat.case("forward", "token store of another model")
        .args(&forward(&s(&assets().join("scgpt")), &tokens))
        .says(&["a geneformer token store", "scgpt model"])
        .absent(&fwd_out)
        .fails();
    let truncated = i.p("truncated_model");
    copy_dir(&i.tiny, &truncated);
    let w = std::fs::read(i.tiny.join("model.safetensors")).unwrap();
    std::fs::write(truncated.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    std::fs::remove_file(truncated.join("pytorch_model.bin")).ok();
    cat.case("forward", "truncated safetensors checkpoint")
        .args(&forward(&s(&truncated), &tokens))
        .says(&["model.safetensors", "not a valid checkpoint"])
        .absent(&fwd_out)
        .fails();
    // A pickle that would run os.system when unpickled by torch: refused, nothing executed.
    let evil = i.p("evil_scgpt");
    std::fs::create_dir_all(&evil).unwrap();
    for f in ["args.json", "vocab.json"] {
        std::fs::copy(assets().join("scgpt").join(f), evil.join(f)).unwrap();
    }
    std::fs::copy(fixtures().join("pickle/os_system.pt"), evil.join("best_model.pt")).unwrap();
    cat.case("forward", "pickle checkpoint with an os.system payload")
        .args(&forward(&s(&evil), &tokens))
        .says(&["best_model.pt"])
        .absent(&fwd_out)
        .fails();

    let acts_out = i.p("acts_out");
    let extract = |model: &str, input: &str, hooks: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "extract",
            "--model",
            model,
            "--input",
            input,
            "--hooks",
            hooks,
            "--out",
            &s(&acts_out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    cat.case("extract", "unknown hook name")
        .args(&extract(&tiny, &tokens, "blocks.1.resid", &[]))
        .says(&["unknown hook point `blocks.1.resid`", "expected hook_embed"])
        .absent(&acts_out)
        .fails();
    cat.case("extract", "hook past the last layer")
        .args(&extract(&tiny, &tokens, "blocks.7.hook_resid_post", &[]))
        .says(&["layer 7", "4 layers"])
        .absent(&acts_out)
        .fails();
    cat.case("extract", "empty --hooks")
        .args(&extract(&tiny, &tokens, "", &[]))
        .says(&["--hooks names no hook"])
        .absent(&acts_out)
        .fails();
    cat.case("extract", "token store of another model")
        .args(&extract(&s(&assets().join("scgpt")), &tokens, "hook_embed", &[]))
        .says(&["a geneformer token store", "scgpt model"])
        .absent(&acts_out)
        .fails();
    // Over-long cells are found before the store is created (it used to be left fully allocated).
    cat.case("extract", "cells longer than the model accepts")
        .args(&extract(
            &s(&assets().join("geneformer")),
            &s(&i.long_tokens),
            "hook_embed",
            &[],
        ))
        .says(&["long_gf", "at most 256", "--max-len 256"])
        .absent(&acts_out)
        .fails();
    cat.case("extract", "input is not a token store")
        .args(&extract(
            &tiny,
            &s(&i.tiny.join("config.json")),
            "hook_embed",
            &[],
        ))
        .says(&["config.json", "not a token store"])
        .absent(&acts_out)
        .fails();
    let busy = i.p("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let mut a = extract(&tiny, &tokens, "hook_embed", &[]);
    *a.last_mut().unwrap() = s(&busy);
    cat.case("extract", "--out is a folder of other files")
        .args(&a)
        .says(&["busy", "not an activation store"])
        .unchanged(&busy)
        .fails();
    cat.case("extract", "--shard 3/2")
        .args(&extract(&tiny, &tokens, "hook_embed", &["--shard", "3/2"]))
        .says(&["--shard", "3/2"])
        .absent(&acts_out)
        .fails();
}

fn sae_cases(cat: &mut Catalogue, i: &Inputs) {
    let acts = s(&i.acts);
    let sae_out = i.p("sae_out");
    let hook = "blocks.0.hook_resid_post";
    let train = |acts: &str, out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "sae",
            "train",
            "--acts",
            acts,
            "--hook",
            hook,
            "--d-sae",
            "32",
            "--k",
            "4",
            "--tokens",
            "2000",
            "--batch-size",
            "64",
            "--splice-cells",
            "0",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    // (clap takes the last of a repeated flag only with overrides; these set each flag once.)
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut a = train(&acts, &sae_out, &[]);
        let at = a.iter().position(|x| x == flag).unwrap();
        a[at + 1] = value.to_string();
        a
    };
    for (flag, value, says) in [
        ("--batch-size", "0", "--batch-size 0"),
        ("--k", "0", "--k 0"),
        ("--k", "64", "--k 64"),
        ("--d-sae", "4000000000", "--d-sae 4000000000"),
        ("--tokens", "0", "--tokens 0"),
    ] {
        cat.case("sae train", &format!("{flag} {value}"))
            .args(&with(flag, value))
            .says(&[says])
            .absent(&sae_out)
            .fails();
    }
    for (flag, value, says) in [
        ("--lr", "nan", "--lr NaN"),
        ("--lr", "1e30", "--lr 1000000000000000000000000000000"),
        ("--holdout", "1.5", "--holdout 1.5"),
        ("--aux-coef", "nan", "--aux-coef NaN"),
    ] {
        cat.case("sae train", &format!("{flag} {value}"))
            .args(&train(&acts, &sae_out, &[flag, value]))
            .says(&[says])
            .absent(&sae_out)
            .fails();
    }
    let mut a = train(&acts, &sae_out, &[]);
    a[5] = "blocks.9.hook_resid_post".into();
    cat.case("sae train", "hook not in the store")
        .args(&a)
        .says(&["acts", "has no hook `blocks.9.hook_resid_post`"])
        .absent(&sae_out)
        .fails();
    cat.case("sae train", "missing store")
        .args(&train(&s(&i.p("no_acts")), &sae_out, &[]))
        .says(&["no_acts", "activation store"])
        .absent(&sae_out)
        .fails();
    // One inf in a row of the store: refused with the file, row and the flag that skips such rows.
    let inf = i.p("acts_inf");
    copy_dir(&i.acts, &inf);
    let npy = inf.join(format!("{hook}.npy"));
    let mut bytes = std::fs::read(&npy).unwrap();
    let at = npy_data_offset(&bytes) + 4 * 128 * 5;
    bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(&npy, &bytes).unwrap();
    cat.case("sae train", "inf in a row of the store")
        .args(&train(&s(&inf), &sae_out, &[]))
        .says(&[
            &format!("{hook}.npy"),
            "row 5",
            "non-finite",
            "--skip-nonfinite-rows",
        ])
        .absent(&sae_out)
        .fails();
    let truncated = i.p("acts_truncated");
    copy_dir(&i.acts, &truncated);
    let npy = truncated.join(format!("{hook}.npy"));
    let bytes = std::fs::read(&npy).unwrap();
    std::fs::write(&npy, &bytes[..bytes.len() - 10]).unwrap();
    cat.case("sae train", "truncated .npy in the store")
        .args(&train(&s(&truncated), &sae_out, &[]))
        .says(&[&format!("{hook}.npy"), "truncated"])
        .absent(&sae_out)
        .fails();
    // An --out that cannot be created (as root, a read-only folder is writable: a file in the way is not).
    let blocker = i.p("a_file");
    std::fs::write(&blocker, "x").unwrap();
    let under = blocker.join("sae");
    cat.case("sae train", "--out cannot be created")
        .args(&train(&acts, &under, &[]))
        .says(&["a_file", "cannot create"])
        .unchanged(&blocker)
        .fails();
    let other = i.p("not_an_sae");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    cat.case("sae train", "--out is a folder of other files")
        .args(&train(&acts, &other, &[]))
        .says(&["not_an_sae", "--overwrite"])
        .unchanged(&other)
        .fails();
    let trained = i.p("trained_sae");
    make(&as_strs(&train(&acts, &trained, &[])));
    cat.case("sae train", "existing SAE without --overwrite")
        .args(&train(&acts, &trained, &["--seed", "3"]))
        .says(&["trained_sae", "already holds an SAE", "--overwrite"])
        .unchanged(&trained)
        .fails();

    let source = i.saes.join(hook);
    let nan = i.p("sae_nan");
    sae_with_value(&source, &nan, 7, f32::NAN);
    cat.case("sae eval", "NaN in W_enc")
        .args(&[
            "sae",
            "eval",
            "--sae",
            &s(&nan),
            "--acts",
            &acts,
            "--splice-cells",
            "0",
        ])
        .says(&["sae_nan", "sae_weights.safetensors", "W_enc", "NaN", "index 7"])
        .fails();
    let codes = i.p("codes");
    cat.case("sae encode", "NaN in W_enc")
        .args(&[
            "sae",
            "encode",
            "--sae",
            &s(&nan),
            "--acts",
            &acts,
            "--out",
            &s(&codes),
        ])
        .says(&["sae_nan", "W_enc", "NaN"])
        .absent(&codes)
        .fails();
    let truncated_sae = i.p("sae_truncated");
    copy_dir(&source, &truncated_sae);
    let w = std::fs::read(source.join("sae_weights.safetensors")).unwrap();
    std::fs::write(truncated_sae.join("sae_weights.safetensors"), &w[..5000]).unwrap();
    cat.case("sae encode", "truncated safetensors")
        .args(&[
            "sae",
            "encode",
            "--sae",
            &s(&truncated_sae),
            "--acts",
            &acts,
            "--out",
            &s(&codes),
        ])
        .says(&["sae_truncated", "sae_weights.safetensors", "truncated"])
        .absent(&codes)
        .fails();
}

fn analyze_layers_cases(cat: &mut Catalogue, i: &Inputs) {
    let acts = s(&i.acts);
    let sae0 = i.saes.join("blocks.0.hook_resid_post");
    let out = i.p("catalog_out");
    let analyze = |sae: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["analyze", "--acts", &acts, "--sae", &s(sae), "--out", &s(&out)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let nan = i.p("sae_nan_an");
    sae_with_value(&sae0, &nan, 3, f32::NAN);
    cat.case("analyze", "NaN in W_enc")
        .args(&analyze(&nan, &[]))
        .says(&["sae_nan_an", "W_enc", "NaN", "index 3"])
        .absent(&out)
        .fails();
    let mismatch = i.p("sae_cfg_mismatch");
    copy_dir(&sae0, &mismatch);
    let cfg = std::fs::read_to_string(sae0.join("cfg.json")).unwrap();
    std::fs::write(
        mismatch.join("cfg.json"),
        cfg.replace("\"d_sae\": 64", "\"d_sae\": 65"),
    )
    .unwrap();
    cat.case("analyze", "cfg.json does not match the weights")
        .args(&analyze(&mismatch, &[]))
        .says(&["sae_cfg_mismatch", "W_enc", "cfg.json", "d_sae 65"])
        .absent(&out)
        .fails();
    cat.case("analyze", "--top-genes 0")
        .args(&analyze(&sae0, &["--top-genes", "0"]))
        .says(&["--top-genes 0"])
        .absent(&out)
        .fails();
    cat.case("analyze", "--hook not in the store")
        .args(&analyze(&sae0, &["--hook", "blocks.3.hook_resid_post"]))
        .says(&["has no hook `blocks.3.hook_resid_post`"])
        .absent(&out)
        .fails();
    let not_tsv = i.p("genes.txt");
    std::fs::write(&not_tsv, "just words\n").unwrap();
    cat.case("analyze", "--genes is not a gene table")
        .args(&analyze(&sae0, &["--genes", &s(&not_tsv)]))
        .says(&["genes.txt", "token"])
        .absent(&out)
        .fails();
    for (flag, value, says) in [
        ("--coact-alpha", "nan", "--coact-alpha NaN"),
        ("--coact-alpha", "0", "--coact-alpha 0"),
        ("--leiden-resolution", "0", "--leiden-resolution 0"),
        ("--coact-min-pmi", "nan", "--coact-min-pmi NaN"),
    ] {
        cat.case("analyze", &format!("{flag} {value}"))
            .args(&analyze(&sae0, &[flag, value]))
            .says(&[says])
            .absent(&out)
            .fails();
    }
    // rows.npy naming a cell the store does not have (cell 10⁶).
    let bogus = i.p("acts_bogus_rows");
    copy_dir(&i.acts, &bogus);
    let rows = bogus.join("rows.npy");
    let mut bytes = std::fs::read(&rows).unwrap();
    let at = npy_data_offset(&bytes);
    let width = (bytes.len() - at) / 558 / 3;
    match width {
        4 => bytes[at..at + 4].copy_from_slice(&1_000_000i32.to_le_bytes()),
        8 => bytes[at..at + 8].copy_from_slice(&1_000_000i64.to_le_bytes()),
        w => panic!("rows.npy: unexpected element size {w}"),
    }
    std::fs::write(&rows, &bytes).unwrap();
    let mut a = analyze(&sae0, &[]);
    a[2] = s(&bogus);
    cat.case("analyze", "rows.npy names a cell the store lacks")
        .args(&a)
        .says(&["rows.npy", "cell 1000000", "damaged"])
        .absent(&out)
        .fails();
    let catalog = i.p("catalog");
    let mut a = analyze(&sae0, &[]);
    *a.iter_mut().find(|x| **x == s(&out)).unwrap() = s(&catalog);
    make(&as_strs(&a));
    a.extend(["--top-genes".to_string(), "5".to_string()]);
    cat.case("analyze", "existing catalog without --overwrite")
        .args(&a)
        .says(&["already holds a catalog", "--overwrite"])
        .unchanged(&catalog)
        .fails();

    let layers_out = i.p("layers_out");
    let sae2 = i.saes.join("blocks.2.hook_resid_post");
    let saes = format!("{},{}", s(&sae0), s(&sae2));
    cat.case("layers", "one SAE only")
        .args(&[
            "layers",
            "--acts",
            &acts,
            "--saes",
            &s(&sae0),
            "--out",
            &s(&layers_out),
        ])
        .says(&["--saes"])
        .absent(&layers_out)
        .fails();
    cat.case("layers", "a token store given as the activation store")
        .args(&[
            "layers",
            "--acts",
            &s(&i.long_tokens),
            "--saes",
            &saes,
            "--out",
            &s(&layers_out),
        ])
        .says(&["long_gf"])
        .absent(&layers_out)
        .fails();
    let nan_pair = i.p("saes_nan");
    sae_with_value(&sae0, &nan_pair.join("blocks.0.hook_resid_post"), 0, f32::NAN);
    copy_dir(
        &i.saes.join("blocks.2.hook_resid_post"),
        &nan_pair.join("blocks.2.hook_resid_post"),
    );
    cat.case("layers", "NaN in an SAE")
        .args(&[
            "layers",
            "--acts",
            &acts,
            "--saes",
            &format!(
                "{},{}",
                s(&nan_pair.join("blocks.0.hook_resid_post")),
                s(&nan_pair.join("blocks.2.hook_resid_post"))
            ),
            "--out",
            &s(&layers_out),
        ])
        .says(&["W_enc", "NaN"])
        .absent(&layers_out)
        .fails();
}

fn annotate_consensus_atlas_cases(cat: &mut Catalogue, i: &Inputs) {
    let atlas = fixtures().join("atlas");
    let catalog = s(&atlas.join("catalog-b1"));
    // The fixture catalogs name genes DEMO<n>.
    let gmt = i.p("demo.gmt");
    let set = |name: &str, r: std::ops::Range<usize>| {
        format!(
            "{name}\tx\t{}\n",
            r.map(|g| format!("DEMO{g}")).collect::<Vec<_>>().join("\t")
        )
    };
    std::fs::write(&gmt, set("SET_A", 4..60) + &set("SET_B", 100..160)).unwrap();
    let gmt = s(&gmt);
    let out = i.p("annotation_out");
    let annotate = |catalog: &str, sets: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "annotate",
            "--catalog",
            catalog,
            "--gene-sets",
            sets,
            "--out",
            &s(&out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    cat.case("annotate", "missing catalog")
        .args(&annotate(&s(&i.p("no_catalog")), &gmt, &[]))
        .says(&["--catalog", "no_catalog", "catalog.json", "scinterp analyze"])
        .absent(&out)
        .fails();
    cat.case("annotate", "--alpha 0")
        .args(&annotate(&catalog, &gmt, &["--alpha", "0"]))
        .says(&["--alpha 0", "(0, 1]"])
        .absent(&out)
        .fails();
    cat.case("annotate", "--alpha nan")
        .args(&annotate(&catalog, &gmt, &["--alpha", "nan"]))
        .says(&["--alpha NaN"])
        .absent(&out)
        .fails();
    let bad_gmt = i.p("bad.gmt");
    std::fs::write(&bad_gmt, "SET_A DEMO4 DEMO5\n").unwrap();
    cat.case("annotate", "GMT that is not tab-separated")
        .args(&annotate(&catalog, &s(&bad_gmt), &[]))
        .says(&["bad.gmt", "line 1", "tab-separated"])
        .absent(&out)
        .fails();
    cat.case("annotate", "missing GMT")
        .args(&annotate(&catalog, &s(&i.p("nope.gmt")), &[]))
        .says(&["nope.gmt", "cannot read"])
        .absent(&out)
        .fails();
    let hallmark = s(&assets().join("genesets/h.all.v7.0.symbols.gmt"));
    cat.case("annotate", "gene sets naming none of the catalog's genes")
        .args(&annotate(&catalog, &hallmark, &[]))
        .says(&["h.all.v7.0.symbols.gmt", "none of the library's genes"])
        .absent(&out)
        .fails();
    cat.case("annotate", "min term size above max")
        .args(&annotate(
            &catalog,
            &gmt,
            &["--min-term-size", "50", "--max-term-size", "10"],
        ))
        .says(&["term sizes [50, 10]"])
        .absent(&out)
        .fails();
    cat.case("annotate", "bad TRRUST file")
        .args(&annotate(&catalog, &gmt, &["--trrust", &s(&bad_gmt)]))
        .says(&["bad.gmt", "TRRUST"])
        .absent(&out)
        .fails();
    cat.case("annotate", "bad PPI file")
        .args(&annotate(&catalog, &gmt, &["--ppi", &s(&bad_gmt)]))
        .says(&["bad.gmt", "edge"])
        .absent(&out)
        .fails();
    let bad_score = i.p("ppi_bad_score.txt");
    std::fs::write(&bad_score, "DEMO4 DEMO5 900\nDEMO6 DEMO7 high\nDEMO8 DEMO9 700\n").unwrap();
    cat.case("annotate", "PPI score that is not a number")
        .args(&annotate(&catalog, &gmt, &["--ppi", &s(&bad_score)]))
        .says(&["ppi_bad_score.txt", "line 2", "`high`"])
        .absent(&out)
        .fails();
    cat.case("annotate", "--top-n 0")
        .args(&annotate(&catalog, &gmt, &["--top-n", "0"]))
        .says(&["--top-n 0"])
        .absent(&out)
        .fails();
    let done = i.p("annotation");
    let mut a = annotate(&catalog, &gmt, &[]);
    *a.last_mut().unwrap() = s(&done);
    cat.case("annotate", "a good run (for the next case)")
        .args(&a)
        .succeeds();
    let mut a = annotate(&catalog, &gmt, &["--top-n", "10"]);
    *a.iter_mut().find(|x| **x == s(&out)).unwrap() = s(&done);
    cat.case("annotate", "existing annotation without --overwrite")
        .args(&a)
        .says(&["annotation", "already holds an annotation", "--overwrite"])
        .unchanged(&done)
        .fails();

    let edges = s(&atlas.join("edges.tsv"));
    let ann = s(&atlas.join("annotation"));
    let cons_out = i.p("consensus_out");
    let consensus = |edges_a: &str, ann_a: &str, out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "consensus",
            "--edges-a",
            edges_a,
            "--annotations-a",
            ann_a,
            "--edges-b",
            &edges,
            "--annotations-b",
            &ann,
            "--permutations",
            "20",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    cat.case("consensus", "missing edge table")
        .args(&consensus(&s(&i.p("nope.tsv")), &ann, &cons_out, &[]))
        .says(&["nope.tsv"])
        .absent(&cons_out)
        .fails();
    cat.case("consensus", "--alpha nan")
        .args(&consensus(&edges, &ann, &cons_out, &["--alpha", "nan"]))
        .says(&["--alpha NaN"])
        .absent(&cons_out)
        .fails();
    let mut a = consensus(&edges, &ann, &cons_out, &[]);
    let at = a.iter().position(|x| x == "--permutations").unwrap();
    a[at + 1] = "0".into();
    cat.case("consensus", "--permutations 0")
        .args(&a)
        .says(&["--permutations"])
        .absent(&cons_out)
        .fails();
    cat.case("consensus", "a catalog given as the annotation")
        .args(&consensus(&edges, &catalog, &cons_out, &[]))
        .says(&["catalog-b1", "enrichment", "scinterp annotate"])
        .absent(&cons_out)
        .fails();
    cat.case("consensus", "edge table without a table extension")
        .args(&consensus(&s(&gmt_path(i)), &ann, &cons_out, &[]))
        .says(&["demo.gmt", ".parquet or .tsv"])
        .absent(&cons_out)
        .fails();
    let done = i.p("consensus");
    make(&as_strs(&consensus(&edges, &ann, &done, &[])));
    cat.case("consensus", "existing output without --overwrite")
        .args(&consensus(&edges, &ann, &done, &["--seed", "4"]))
        .says(&["consensus", "--overwrite"])
        .unchanged(&done)
        .fails();

    let site = i.p("site");
    cat.case("atlas", "nothing to build")
        .args(&["atlas", "--out", &s(&site)])
        .says(&["nothing to build"])
        .absent(&site)
        .fails();
    let text = std::fs::read_to_string(atlas.join("edges.tsv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut cols: Vec<String> = lines[1].split('\t').map(str::to_string).collect();
    cols[1] = "9999".into();
    lines[1] = cols.join("\t");
    let other_edges = i.p("other_edges.tsv");
    std::fs::write(&other_edges, lines.join("\n") + "\n").unwrap();
    cat.case("atlas", "edges of another SAE")
        .args(&[
            "atlas",
            "--catalogs",
            &catalog,
            "--edges",
            &s(&other_edges),
            "--out",
            &s(&site),
        ])
        .says(&["other_edges.tsv", "catalog-b1", "feature 9999"])
        .absent(&site)
        .fails();
    cat.case("atlas", "annotation of catalogs not given")
        .args(&[
            "atlas",
            "--catalogs",
            &s(&atlas.join("catalog-b2")),
            "--annotation",
            &ann,
            "--out",
            &s(&site),
        ])
        .says(&["annotate.json", "not among --catalogs"])
        .absent(&site)
        .fails();
    let broken = i.p("broken_catalog");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["catalog.json", "features.parquet"] {
        std::fs::copy(atlas.join("catalog-b2").join(f), broken.join(f)).unwrap();
    }
    cat.case("atlas", "catalog missing a table")
        .args(&["atlas", "--catalogs", &s(&broken), "--out", &s(&site)])
        .says(&["broken_catalog", "top_genes"])
        .absent(&site)
        .fails();
    let other = i.p("busy_site");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("index.txt"), "mine").unwrap();
    cat.case("atlas", "--out is a folder that is not an atlas")
        .args(&[
            "atlas",
            "--catalogs",
            &catalog,
            "--out",
            &s(&other),
            "--overwrite",
        ])
        .says(&["busy_site", "not an atlas"])
        .unchanged(&other)
        .fails();
}

fn gmt_path(i: &Inputs) -> PathBuf {
    i.p("demo.gmt")
}

fn trace_cases(cat: &mut Catalogue, i: &Inputs) {
    let out = i.p("edges_out.tsv");
    let trace = |model: &str, input: &str, out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "trace",
            "--model",
            model,
            "--input",
            input,
            "--saes",
            &s(&i.saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--targets",
            "blocks.2.hook_resid_post",
            "--cells",
            "8",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let (tiny, tokens) = (s(&i.tiny), s(&i.tokens));
    let checkpoint = out.with_extension("checkpoint");
    let t = |extra: &[&str]| trace(&tiny, &tokens, &out, extra);
    for (name, extra, says) in [
        (
            "--features \"\"",
            vec!["--features", ""],
            vec!["--features", "names no feature"],
        ),
        (
            "--features top:0",
            vec!["--features", "top:0"],
            vec!["--features top:0", "at least 1"],
        ),
        (
            "--features 999",
            vec!["--features", "999"],
            vec!["999", "64 latents"],
        ),
        ("--features x", vec!["--features", "x"], vec!["--features", "`x`"]),
        ("--max-q nan", vec!["--max-q", "nan"], vec!["--max-q NaN"]),
        ("--max-q 2", vec!["--max-q", "2"], vec!["--max-q 2"]),
        (
            "--min-abs-d inf",
            vec!["--min-abs-d", "inf"],
            vec!["--min-abs-d inf"],
        ),
        (
            "--min-consistency nan",
            vec!["--min-consistency", "nan"],
            vec!["--min-consistency NaN"],
        ),
        (
            "--min-cells 1",
            vec!["--min-cells", "1"],
            vec!["--min-cells 1", "at least 3"],
        ),
    ] {
        cat.case("trace", name)
            .args(&t(&extra))
            .says(&says)
            .absent(&out)
            .absent(&checkpoint)
            .fails();
    }
    let mut a = t(&[]);
    let at = a.iter().position(|x| x == "--cells").unwrap();
    a[at + 1] = "0".into();
    cat.case("trace", "--cells 0")
        .args(&a)
        .says(&["--cells 0"])
        .absent(&out)
        .absent(&checkpoint)
        .fails();
    let mut a = t(&[]);
    let at = a.iter().position(|x| x == "--source").unwrap();
    a[at + 1] = "blocks.0.hook_mlp_out".into();
    cat.case("trace", "source is not a block output")
        .args(&a)
        .says(&["blocks.0.hook_mlp_out", "hook_resid_post"])
        .absent(&out)
        .fails();
    let mut a = t(&[]);
    let at = a.iter().position(|x| x == "--targets").unwrap();
    a[at + 1] = "blocks.0.hook_resid_post".into();
    cat.case("trace", "target not downstream of the source")
        .args(&a)
        .says(&["--targets blocks.0.hook_resid_post", "after the source"])
        .absent(&out)
        .fails();
    let csv = i.p("edges.csv");
    cat.case("trace", "table name without .parquet/.tsv leaves no checkpoint")
        .args(&trace(&tiny, &tokens, &csv, &["--features", "0"]))
        .says(&["edges.csv", ".parquet or .tsv"])
        .absent(&csv)
        .absent(&csv.with_extension("checkpoint"))
        .fails();
    cat.case("trace", "cells longer than the model accepts")
        .args(&trace(
            &s(&assets().join("geneformer")),
            &s(&i.long_tokens),
            &out,
            &[],
        ))
        .says(&["long_gf", "--max-len 256"])
        .absent(&out)
        .fails();
    // A checkpoint with one flipped bit is refused (it used to resume into another table or panic).
    let stopped = i.p("stopped.tsv");
    let ck = stopped.with_extension("checkpoint");
    let resume = trace(
        &tiny,
        &tokens,
        &stopped,
        &["--features", "0,1,2,3", "--chunk-cells", "4"],
    );
    let mut first = resume.clone();
    first.extend(["--stop-after-chunks".to_string(), "1".to_string()]);
    let o = scinterp(&as_strs(&first));
    assert!(!o.status.success() && ck.is_file(), "no checkpoint to corrupt");
    let mut bytes = std::fs::read(&ck).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    std::fs::write(&ck, bytes).unwrap();
    cat.case("trace", "checkpoint with a flipped bit")
        .args(&resume)
        .says(&["stopped.checkpoint", "checksum"])
        .absent(&stopped)
        .unchanged(&ck)
        .fails();
    let done = i.p("edges.tsv");
    make(&as_strs(&trace(&tiny, &tokens, &done, &["--features", "0,1"])));
    cat.case("trace", "existing table without --overwrite")
        .args(&trace(&tiny, &tokens, &done, &["--features", "0,1,2"]))
        .says(&["edges.tsv", "already holds a trace table", "--overwrite"])
        .unchanged(&done)
        .fails();

    let merged = i.p("merged.tsv");
    let merge = |shards: &[&Path], extra: &[&str]| -> Vec<String> {
        let list = shards.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
        let mut a: Vec<String> = ["trace", "merge", "--shards", &list, "--out", &s(&merged)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let [s0, s1] = &i.shards;
    cat.case("trace merge", "the same shard twice")
        .args(&merge(&[s0, s0], &[]))
        .says(&["shard0.bin", "given twice"])
        .absent(&merged)
        .fails();
    cat.case("trace merge", "a shard missing")
        .args(&merge(&[s0], &[]))
        .says(&["0/2", "once each"])
        .absent(&merged)
        .fails();
    cat.case("trace merge", "shards of two different traces")
        .args(&merge(&[s0, &i.other_shard], &[]))
        .says(&["other_shard1.bin", "another trace"])
        .absent(&merged)
        .fails();
    let missing = i.p("missing.bin");
    cat.case("trace merge", "missing shard file")
        .args(&merge(&[&missing, s1], &[]))
        .says(&["missing.bin", "no such shard"])
        .absent(&merged)
        .fails();
    cat.case("trace merge", "not a shard file")
        .args(&merge(&[&gmt_path(i), s1], &[]))
        .says(&["demo.gmt", "not a scinterp trace file"])
        .absent(&merged)
        .fails();
    let flipped = i.p("flipped.bin");
    let mut bytes = std::fs::read(s0).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&flipped, &bytes).unwrap();
    cat.case("trace merge", "shard with a flipped bit")
        .args(&merge(&[&flipped, s1], &[]))
        .says(&["flipped.bin", "checksum"])
        .absent(&merged)
        .fails();
    let cut = i.p("cut.bin");
    std::fs::write(&cut, &std::fs::read(s0).unwrap()[..200]).unwrap();
    cat.case("trace merge", "truncated shard")
        .args(&merge(&[&cut, s1], &[]))
        .says(&["cut.bin"])
        .absent(&merged)
        .fails();
    cat.case("trace merge", "--max-q nan")
        .args(&merge(&[s0, s1], &["--max-q", "nan"]))
        .says(&["--max-q NaN"])
        .absent(&merged)
        .fails();
    let mut a = merge(&[s0, s1], &[]);
    *a.iter_mut().find(|x| **x == s(&merged)).unwrap() = s(&done);
    cat.case("trace merge", "existing table without --overwrite")
        .args(&a)
        .says(&["edges.tsv", "--overwrite"])
        .unchanged(&done)
        .fails();
}

fn effects_cases(cat: &mut Catalogue, i: &Inputs) {
    let out = i.p("effects_out.parquet");
    let effects = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "effects",
            "--model",
            &s(&i.tiny),
            "--input",
            &s(&i.tokens),
            "--saes",
            &s(&i.saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--cells",
            "4",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let npy = |name: &str, values: &[f32]| -> String {
        let header = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
            values.len()
        );
        let mut h = header.into_bytes();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h);
        for v in values {
            bytes.extend(v.to_le_bytes());
        }
        let p = i.p(name);
        std::fs::write(&p, bytes).unwrap();
        s(&p)
    };
    let wrong_size = npy("direction_short.npy", &[1.0; 7]);
    let mut nan_dir = vec![0.5f32; 128];
    nan_dir[9] = f32::NAN;
    let nan_dir = npy("direction_nan.npy", &nan_dir);
    let missing = s(&i.p("nope.npy"));
    let not_npy = s(&gmt_path(i));
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "--alphas nan,inf",
            vec![
                "--features",
                "0",
                "--readout-tokens",
                "5,6,7",
                "--alphas",
                "nan,inf",
            ],
            vec!["--alphas", "NaN", "finite"],
        ),
        (
            "empty --readout-tokens",
            vec!["--features", "0", "--readout-tokens", ""],
            vec!["--readout-tokens names no token"],
        ),
        (
            "readout id outside the vocabulary",
            vec!["--features", "0", "--readout-tokens", "5,99999"],
            vec!["--readout-tokens", "99999", "vocabulary (96 tokens)"],
        ),
        (
            "readout id that is not a number",
            vec!["--features", "0", "--readout-tokens", "5,CD3E"],
            vec!["--readout-tokens", "`CD3E`"],
        ),
        (
            "--features \"\"",
            vec!["--features", "", "--readout-tokens", "5"],
            vec!["--features", "names no feature"],
        ),
        (
            "--features 999",
            vec!["--features", "999", "--readout-tokens", "5"],
            vec!["999", "64 latents"],
        ),
        (
            "source at the last block",
            vec![
                "--features",
                "0",
                "--readout-tokens",
                "5",
                "--source",
                "blocks.3.hook_resid_post",
            ],
            vec!["--source blocks.3.hook_resid_post"],
        ),
        (
            "missing --direction file",
            vec![
                "--features",
                "0",
                "--readout-tokens",
                "5",
                "--direction",
                &missing,
            ],
            vec!["--direction", "nope.npy"],
        ),
        (
            "--direction is not .npy",
            vec![
                "--features",
                "0",
                "--readout-tokens",
                "5",
                "--direction",
                &not_npy,
            ],
            vec!["--direction", "demo.gmt", "not an .npy file"],
        ),
        (
            "--direction of the wrong width",
            vec![
                "--features",
                "0",
                "--readout-tokens",
                "5",
                "--direction",
                &wrong_size,
            ],
            vec!["direction_short.npy", "expected 128"],
        ),
        (
            "--direction holding NaN",
            vec![
                "--features",
                "0",
                "--readout-tokens",
                "5",
                "--direction",
                &nan_dir,
            ],
            vec!["direction_nan.npy", "value 9", "NaN"],
        ),
    ];
    for (name, extra, says) in cases {
        let mut a = effects(&out, &[]);
        // --source given twice is refused by clap: replace it instead.
        let mut extra: Vec<&str> = extra;
        if let Some(at) = extra.iter().position(|x| *x == "--source") {
            let at_a = a.iter().position(|x| x == "--source").unwrap();
            a[at_a + 1] = extra[at + 1].to_string();
            extra.drain(at..at + 2);
        }
        a.extend(extra.iter().map(|x| x.to_string()));
        cat.case("effects", name)
            .args(&a)
            .says(&says)
            .never(&["nope.npy: cannot read"])
            .absent(&out)
            .fails();
    }
    let mut a = effects(&out, &["--features", "0", "--readout-tokens", "5"]);
    let at = a.iter().position(|x| x == "--cells").unwrap();
    a[at + 1] = "0".into();
    cat.case("effects", "--cells 0")
        .args(&a)
        .says(&["--cells 0"])
        .absent(&out)
        .fails();
    let csv = i.p("effects.csv");
    cat.case("effects", "table name without .parquet/.tsv")
        .args(&effects(&csv, &["--features", "0", "--readout-tokens", "5"]))
        .says(&["effects.csv", ".parquet or .tsv"])
        .absent(&csv)
        .fails();
    let done = i.p("effects.parquet");
    make(&as_strs(&effects(
        &done,
        &["--features", "0", "--readout-tokens", "5,6,7"],
    )));
    cat.case("effects", "existing table without --overwrite")
        .args(&effects(&done, &["--features", "1", "--readout-tokens", "5"]))
        .says(&["effects.parquet", "already holds an effects table", "--overwrite"])
        .unchanged(&done)
        .fails();
}

fn export_apply_cases(cat: &mut Catalogue, i: &Inputs) {
    let pbmc = s(&assets().join("cells/pbmc68k.h5ad.gz"));
    let out = i.p("tool_out");
    let export = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "export",
            "operator",
            "--model",
            &s(&assets().join("scgpt")),
            "--input",
            &pbmc,
            "--labels",
            "bulk_labels",
            "--root",
            "0",
            "--construction",
            "weights-qk",
            "--out",
            &s(&out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let panel = i.p("panel.txt");
    std::fs::write(&panel, "CD3E\nNOT_A_GENE_X\nFAKE2\n").unwrap();
    let empty_panel = i.p("empty_panel.txt");
    std::fs::write(&empty_panel, "").unwrap();
    let (panel, empty_panel, no_panel) = (s(&panel), s(&empty_panel), s(&i.p("no_panel.txt")));
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "a head that does not exist",
            vec!["--heads", "7.0"],
            vec!["--heads", "head 7.0 does not exist", "3 layers × 2 heads"],
        ),
        (
            "a head index past the layer's heads",
            vec!["--heads", "0.5"],
            vec!["head 0.5 does not exist"],
        ),
        (
            "a head that is not LAYER.HEAD",
            vec!["--heads", "x.y"],
            vec!["--heads", "`x.y`"],
        ),
        (
            "a drift block past the last layer",
            vec!["--drift", "0-1;5-9"],
            vec!["--drift", "layer 9"],
        ),
        (
            "panel genes unknown to the model",
            vec!["--panel", &panel],
            vec!["--panel", "NOT_A_GENE_X", "FAKE2"],
        ),
        (
            "missing panel file",
            vec!["--panel", &no_panel],
            vec!["--panel", "no_panel.txt"],
        ),
        (
            "empty panel",
            vec!["--panel", &empty_panel],
            vec!["--panel", "panel genes"],
        ),
        ("--rank 0", vec!["--rank", "0"], vec!["--rank", "at least 1"]),
        (
            "--d-latent 0",
            vec!["--d-latent", "0"],
            vec!["--d-latent", "at least 1"],
        ),
        (
            "--heldout 1.5",
            vec!["--heldout", "1.5"],
            vec!["--heldout", "[0, 1)"],
        ),
        (
            "--stage-order naming no label",
            vec!["--stage-order", "CD4+,NotACellType"],
            vec!["--stage-order", "NotACellType", "bulk_labels"],
        ),
    ];
    for (name, extra, says) in cases {
        cat.case("export operator", name)
            .args(&export(&extra))
            .says(&says)
            .absent(&out)
            .fails();
    }
    // --heldout 0 holds out no cell (it held out one per label) and the card's metrics say so (null),
    // instead of numbers measured on cells that were fitted on.
    let all_fitted = i.p("tool_heldout0");
    let mut a = export(&["--heldout", "0", "--hvg", "60"]);
    *a.iter_mut().find(|x| **x == s(&out)).unwrap() = s(&all_fitted);
    let run = cat.case("export operator", "--heldout 0").args(&a).succeeds();
    if run.status.success() {
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(all_fitted.join("card.json")).unwrap()).unwrap();
        let m = &card["metrics"];
        let stdout = String::from_utf8_lossy(&run.stdout);
        if m["heldout_cells"] != 0
            || m["training_cells"] != 700
            || !m["cell_type"].is_null()
            || !m["pseudotime"].is_null()
            || !stdout.contains("held-out: none")
        {
            cat.fail(
                "export operator",
                "--heldout 0",
                format!("metrics {m}; stdout:\n{stdout}"),
            );
        }
    }
    // A panel gene the cells hold but the model does not know: an scGPT folder whose vocabulary lacks CD3E.
    let cut = i.p("scgpt_without_cd3e");
    std::fs::create_dir_all(&cut).unwrap();
    for f in ["args.json", "model.safetensors"] {
        std::fs::copy(assets().join("scgpt").join(f), cut.join(f)).unwrap();
    }
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(assets().join("scgpt/vocab.json")).unwrap()).unwrap();
    assert!(vocab.remove("CD3E").is_some());
    std::fs::write(cut.join("vocab.json"), serde_json::to_string(&vocab).unwrap()).unwrap();
    let known = i.p("known_panel.txt");
    std::fs::write(&known, "CD3E\nCD79A\nLYZ\n").unwrap();
    let mut a = export(&["--panel", &s(&known)]);
    let at = a.iter().position(|x| x == "--model").unwrap();
    a[at + 1] = s(&cut);
    cat.case(
        "export operator",
        "panel gene in the cells but unknown to the model",
    )
    .args(&a)
    .says(&["--panel", "unknown to the model", "CD3E"])
    .absent(&out)
    .fails();
    let mut a = export(&[]);
    let at = a.iter().position(|x| x == "--labels").unwrap();
    a[at + 1] = "nope".into();
    cat.case("export operator", "--labels column missing (gzipped input)")
        .args(&a)
        .says(&["pbmc68k.h5ad.gz", "`nope`"])
        .never(&["/.tmp"])
        .absent(&out)
        .fails();
    let mut a = export(&[]);
    let at = a.iter().position(|x| x == "--root").unwrap();
    a[at + 1] = "99999".into();
    cat.case("export operator", "--root not a cell")
        .args(&a)
        .says(&["--root", "99999"])
        .absent(&out)
        .fails();
    let mut a = export(&[]);
    *a.iter_mut().find(|x| **x == s(&out)).unwrap() = s(&i.tool);
    cat.case("export operator", "existing tool without --overwrite")
        .args(&a)
        .says(&["tool", "--overwrite"])
        .unchanged(&i.tool)
        .fails();

    let calls = i.p("calls.tsv");
    let apply = |tool: &Path, input: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["apply", "--tool", &s(tool), "--input", input, "--out", &s(&calls)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    cat.case("apply", "cells missing most panel genes (mouse, no --orthologs)")
        .args(&apply(&i.tool, &s(&assets().join("cells/paul15.h5ad.gz")), &[]))
        .says(&[
            "paul15.h5ad.gz",
            "only 0 of the tool's 60 panel genes",
            "--orthologs",
        ])
        .absent(&calls)
        .fails();
    let broken = |name: &str| {
        let dir = i.p(name);
        copy_dir(&i.tool, &dir);
        dir
    };
    let truncated = broken("tool_truncated");
    let w = std::fs::read(truncated.join("tool.safetensors")).unwrap();
    std::fs::write(truncated.join("tool.safetensors"), &w[..w.len() / 2]).unwrap();
    cat.case("apply", "truncated tool file")
        .args(&apply(&truncated, &pbmc, &[]))
        .says(&["tool.safetensors", "truncated"])
        .absent(&calls)
        .fails();
    let onnx = broken("tool_onnx");
    let w = std::fs::read(onnx.join("tool.onnx")).unwrap();
    std::fs::write(onnx.join("tool.onnx"), &w[..w.len() - 100]).unwrap();
    cat.case("apply", "truncated ONNX file")
        .args(&apply(&onnx, &pbmc, &[]))
        .says(&["tool.onnx", "truncated"])
        .absent(&calls)
        .fails();
    let swapped = broken("tool_swapped");
    std::fs::copy(
        i.other_tool.join("tool.safetensors"),
        swapped.join("tool.safetensors"),
    )
    .unwrap();
    cat.case("apply", "weights of another tool under this card")
        .args(&apply(&swapped, &pbmc, &[]))
        .says(&["tool_swapped", "does not belong"])
        .absent(&calls)
        .fails();
    let card = broken("tool_card");
    let path = card.join("card.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["panel"].as_array_mut().unwrap().pop();
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    cat.case("apply", "card that does not match its weights")
        .args(&apply(&card, &pbmc, &[]))
        .says(&["card.json", "panel genes"])
        .absent(&calls)
        .fails();
    let bad_card = broken("tool_bad_card");
    std::fs::write(bad_card.join("card.json"), "{\"format\": ").unwrap();
    cat.case("apply", "card that is not JSON")
        .args(&apply(&bad_card, &pbmc, &[]))
        .says(&["card.json"])
        .absent(&calls)
        .fails();
    cat.case("apply", "not a tool folder")
        .args(&apply(&i.p("no_tool"), &pbmc, &[]))
        .says(&["no_tool", "card.json", "scinterp export"])
        .absent(&calls)
        .fails();
    for (name, value, says) in [
        ("--min-panel-fraction nan", "nan", "--min-panel-fraction"),
        ("--min-panel-fraction 1.5", "1.5", "[0, 1]"),
    ] {
        cat.case("apply", name)
            .args(&apply(&i.tool, &pbmc, &["--min-panel-fraction", value]))
            .says(&[says])
            .absent(&calls)
            .fails();
    }
    cat.case("apply", "missing input")
        .args(&apply(&i.tool, &s(&i.p("cells.h5ad")), &[]))
        .says(&["cells.h5ad", "no such file"])
        .absent(&calls)
        .fails();
    // The right answer: a tool applied to the cells it was built from calls every cell.
    let out = cat
        .case("apply", "a good run (for the next case)")
        .args(&apply(&i.tool, &pbmc, &[]))
        .succeeds();
    if out.status.success() {
        let text = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(text.lines().count(), 701, "one row per cell and a header");
    }
    cat.case("apply", "existing calls without --overwrite")
        .args(&apply(&i.tool, &pbmc, &[]))
        .says(&["calls.tsv", "--overwrite"])
        .unchanged(&calls)
        .fails();
}

#[test]
fn bad_input_catalogue() {
    let inputs = build_inputs();
    let mut cat = Catalogue::default();
    tokenize_cases(&mut cat, &inputs);
    forward_extract_cases(&mut cat, &inputs);
    sae_cases(&mut cat, &inputs);
    analyze_layers_cases(&mut cat, &inputs);
    annotate_consensus_atlas_cases(&mut cat, &inputs);
    trace_cases(&mut cat, &inputs);
    effects_cases(&mut cat, &inputs);
    export_apply_cases(&mut cat, &inputs);
    let total: usize = cat.per_command.values().sum();
    for (command, n) in &cat.per_command {
        println!("{command:>16}: {n} cases");
    }
    println!("{:>16}: {total} cases, {} failed", "total", cat.failures.len());
    assert!(total >= 60, "the catalogue holds {total} cases");
    assert!(
        cat.failures.is_empty(),
        "{} of {total} cases failed:\n\n{}",
        cat.failures.len(),
        cat.failures.join("\n\n")
    );
}
