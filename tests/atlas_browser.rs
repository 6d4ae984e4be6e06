//! The atlas in a real browser: headless Chromium driven through chromedriver (W3C WebDriver, spoken here
//! over std::net). The site is built from the demo's outputs (tests/fixtures/atlas) and opened from
//! file:// with no server and no flags that relax file access. The test opens the overview, searches a
//! gene, opens a feature page, checks its top genes, terms, cell types and top cells against the tables
//! (the cell types from an annotation with --obs-column made here, as the fixture's has none), opens its
//! circuit view, checks that every number has a definition on hover and that the console stayed clean, and saves
//! screenshots (kept with SCINTERP_KEEP_SCREENSHOTS=1; the path is printed).
//!
//! Needs Debian's `chromium` and `chromium-driver` (or SCINTERP_CHROMIUM / SCINTERP_CHROMEDRIVER). Without
//! them the test fails under CI=true and skips with a message elsewhere.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo_root, required_in_ci, scinterp};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_tool(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/chromium")])
        {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Chromium and chromedriver, or None after failing (CI) or printing why the test skips.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = find_tool("SCINTERP_CHROMIUM", &["chromium", "chromium-browser"]);
    let driver = find_tool("SCINTERP_CHROMEDRIVER", &["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => required_in_ci(
            "Chromium or chromedriver not found (install Debian's chromium and chromium-driver, as \
             .ci/run does, or set SCINTERP_CHROMIUM and SCINTERP_CHROMEDRIVER)",
        ),
    }
}

/// A chromedriver process and one browser session, both ended on drop.
struct Driver {
    port: u16,
    session: String,
    child: Child,
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver may keep the connection open: read the headers, then exactly the body they announce.
    let mut reader = std::io::BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line.to_lowercase());
    }
    let mut payload = Vec::new();
    if let Some(n) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        payload.resize(n.trim().parse().unwrap_or(0), 0);
        reader.read_exact(&mut payload)?;
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let mut size = String::new();
            std::io::BufRead::read_line(&mut reader, &mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            payload.extend_from_slice(&chunk[..n]);
        }
    } else {
        reader.read_to_end(&mut payload)?;
    }
    Ok(serde_json::from_slice(&payload).unwrap_or(Value::Null))
}

impl Driver {
    fn start(chromium: &Path, chromedriver: &Path, profile: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let started = Instant::now();
        while http(port, "GET", "/status", None)
            .map(|v| v["value"]["ready"] != json!(true))
            .unwrap_or(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let mut driver = Driver {
            port,
            session: String::new(),
            child,
        };
        let v = http(port, "POST", "/session", Some(&caps)).expect("new session");
        driver.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        driver
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if v["value"]["error"].is_string() {
            panic!("{method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn script(&self, js: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": js, "args": []})))
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }

    /// Waits until the page has rendered the route `prefix…` and returns the route.
    fn wait_route(&self, prefix: &str) -> String {
        let started = Instant::now();
        loop {
            let r = self.script("return document.body.dataset.ready ? document.body.dataset.route : null;");
            if let Some(r) = r.as_str() {
                if r.starts_with(prefix) {
                    return r.to_string();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "page never rendered {prefix} (at {r})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        std::fs::write(path, base64_decode(b64.as_str().unwrap())).unwrap();
    }

    /// Console messages at level SEVERE since the last call (chromedriver's log endpoint).
    fn severe_logs(&self) -> Vec<String> {
        let v = self.cmd("POST", "/se/log", Some(json!({"type": "browser"})));
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == json!("SEVERE"))
                    .map(|e| e["message"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(self.port, "DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        acc = (acc << 6) | alphabet.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn parquet_rows(path: &Path) -> Vec<Vec<(String, Field)>> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| {
            r.unwrap()
                .get_column_iter()
                .map(|(n, f)| (n.clone(), f.clone()))
                .collect()
        })
        .collect()
}

fn get<'a>(row: &'a [(String, Field)], name: &str) -> &'a Field {
    &row.iter().find(|(n, _)| n == name).unwrap().1
}

fn text(f: &Field) -> String {
    match f {
        Field::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

fn float(f: &Field) -> f64 {
    match f {
        Field::Double(x) => *x,
        Field::Long(x) => *x as f64,
        other => panic!("not a number: {other:?}"),
    }
}

/// Parses a number as the page prints it (thousands separators, exponents).
fn shown(s: &str) -> f64 {
    s.replace(',', "").trim().parse().unwrap_or(f64::NAN)
}

/// An annotation with cell types of the fixture's catalogs (whose own annotation ran without --obs-column):
/// copies of the three catalogs point at a token store of our own whose `cell_type` labels blocks.1 feature
/// 0's top 10 % cells (by mean_when_active, the rule annotate applies) `planted` and every other cell A, B or
/// C in turn; its one gene set is below the minimum term size, so it adds no terms. Returns the annotation folder
/// and the cell_types.parquet rows of blocks.1 feature 0, by p.
fn cell_type_annotation(fx: &Path, tmp: &Path) -> (PathBuf, Vec<Vec<(String, Field)>>) {
    let ct = tmp.join("celltypes");
    let store = ct.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut cats = Vec::new();
    for c in ["catalog-b1", "catalog-b2", "catalog-b3"] {
        let dst = ct.join(c);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(fx.join(c)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        let json_path = dst.join("catalog.json");
        let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        j["token_store"] = json!(store.display().to_string());
        std::fs::write(&json_path, j.to_string()).unwrap();
        cats.push(dst.display().to_string());
    }
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("catalog-b1/catalog.json")).unwrap()).unwrap();
    let n_cells = j["n_cells"].as_u64().unwrap() as usize;
    let mut active: Vec<(i64, f64)> = parquet_rows(&fx.join("catalog-b1/feature_cells.parquet"))
        .iter()
        .filter(|r| *get(r, "feature") == Field::Long(0))
        .map(|r| match get(r, "cell") {
            Field::Long(c) => (*c, float(get(r, "mean_when_active"))),
            other => panic!("cell {other:?}"),
        })
        .collect();
    active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<i64> = active[..active.len().div_ceil(10)].iter().map(|c| c.0).collect();
    assert!(
        top.len() >= 5,
        "blocks.1 feature 0 has {} active cells",
        active.len()
    );
    let mut tsv = String::from("barcode\tcell_type\n");
    for c in 0..n_cells {
        let label = if top.contains(&(c as i64)) {
            "planted"
        } else {
            ["A", "B", "C"][c % 3]
        };
        tsv.push_str(&format!("cell{c}\t{label}\n"));
    }
    std::fs::write(store.join("cells.tsv"), tsv).unwrap();
    // annotate needs a library whose genes the catalogs know; one term of 3 genes is below the minimum
    // term size (5), so nothing is tested.
    let genes: Vec<String> = parquet_rows(&fx.join("catalog-b1/genes.parquet"))
        .iter()
        .take(3)
        .map(|r| text(get(r, "symbol")))
        .collect();
    let gmt = ct.join("none.gmt");
    std::fs::write(&gmt, format!("TOO_SMALL\tna\t{}\n", genes.join("\t"))).unwrap();
    let out_dir = ct.join("annotation");
    let out = scinterp(&[
        "annotate",
        "--catalog",
        &cats.join(","),
        "--gene-sets",
        gmt.to_str().unwrap(),
        "--obs-column",
        "cell_type",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<Vec<(String, Field)>> = parquet_rows(&out_dir.join("cell_types.parquet"))
        .into_iter()
        .filter(|r| {
            text(get(r, "catalog")) == "blocks.1.hook_resid_post" && *get(r, "feature") == Field::Long(0)
        })
        .collect();
    rows.sort_by(|a, b| float(get(a, "p_value")).total_cmp(&float(get(b, "p_value"))));
    (out_dir, rows)
}

#[test]
fn atlas_works_in_headless_chromium_from_file_urls() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let fx = repo_root().join("tests/fixtures/atlas");
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    let cats: Vec<String> = ["catalog-b1", "catalog-b2", "catalog-b3"]
        .iter()
        .map(|c| fx.join(c).display().to_string())
        .collect();
    let (ct_annotation, ct_feature0) = cell_type_annotation(&fx, tmp.path());
    let annotations = format!("{},{}", fx.join("annotation").display(), ct_annotation.display());
    let out = scinterp(&[
        "atlas",
        "--catalogs",
        &cats.join(","),
        "--annotation",
        &annotations,
        "--edges",
        fx.join("edges.tsv").to_str().unwrap(),
        "--effects",
        fx.join("effects.parquet").to_str().unwrap(),
        "--layers",
        fx.join("layers").to_str().unwrap(),
        "--out",
        site.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shots = tmp.path().join("screenshots");
    std::fs::create_dir(&shots).unwrap();

    // The feature to reach through gene search: blocks.1 feature 0 (it has circuit edges); the gene is its
    // first gene by conditional mean.
    let top = parquet_rows(&fx.join("catalog-b1/top_genes.parquet"));
    let mut ranked: Vec<&Vec<(String, Field)>> = top
        .iter()
        .filter(|r| *get(r, "feature") == Field::Long(0) && text(get(r, "ranking")) == "conditional_mean")
        .collect();
    ranked.sort_by_key(|r| match get(r, "rank") {
        Field::Long(x) => *x,
        _ => 0,
    });
    let gene = text(get(ranked[0], "symbol"));

    let driver = Driver::start(&chromium, &chromedriver, &tmp.path().join("profile"));
    let index = format!("file://{}/index.html", site.canonicalize().unwrap().display());
    driver.cmd("POST", "/url", Some(json!({"url": index})));
    driver.wait_route("");
    let cards = driver.script("return [...document.querySelectorAll('.card .big')].map(e => e.textContent);");
    assert_eq!(cards[0], json!("3"), "three layers: {cards}");
    let layer_links = driver.script("return document.querySelectorAll('#ov-layers-table tbody tr').length;");
    assert_eq!(layer_links, json!(3));
    driver.screenshot(&shots.join("overview.png"));

    // Gene search: type the gene, press Enter.
    driver.type_into("#gene-input", &format!("{gene}\u{E007}"));
    driver.wait_route("gene/");
    let rows = driver.script(
        "return [...document.querySelectorAll('#gene-features-table tbody tr')].map(r => [+r.dataset.layer, +r.dataset.feature]);",
    );
    assert!(
        rows.as_array().unwrap().contains(&json!([0, 0])),
        "{gene} lists blocks.1 feature 0: {rows}"
    );
    driver.screenshot(&shots.join("gene.png"));
    driver.click("#gene-features-table tr[data-layer='0'][data-feature='0'] a");
    driver.wait_route("feature/0/0");

    // Top genes by both rankings, as in top_genes.parquet (symbol, n_fired, mean_when_fired, mass).
    for (table, ranking) in [("top-genes-cm", "conditional_mean"), ("top-genes-mass", "mass")] {
        let page = driver.script(&format!(
            "return [...document.querySelectorAll('#{table} tr[data-gene]')].map(r => [...r.cells].map(c => c.textContent));"
        ));
        let mut want: Vec<&Vec<(String, Field)>> = top
            .iter()
            .filter(|r| *get(r, "feature") == Field::Long(0) && text(get(r, "ranking")) == ranking)
            .collect();
        want.sort_by_key(|r| match get(r, "rank") {
            Field::Long(x) => *x,
            _ => 0,
        });
        let page = page.as_array().unwrap();
        assert_eq!(page.len(), want.len(), "{table}");
        for (cells, r) in page.iter().zip(&want) {
            assert_eq!(cells[1], json!(text(get(r, "symbol"))), "{table}");
            assert_eq!(
                shown(cells[2].as_str().unwrap()),
                float(get(r, "n_fired")),
                "{table}"
            );
            // n_positions comes from genes.js and fire_rate is derived on the page.
            for (k, col) in [
                (3, "n_positions"),
                (4, "mean_when_fired"),
                (5, "mass"),
                (6, "fire_rate"),
            ] {
                let (a, b) = (shown(cells[k].as_str().unwrap()), float(get(r, col)));
                assert!(
                    (a - b).abs() <= 1e-3 * b.abs(),
                    "{table} {col}: page {a}, table {b}"
                );
            }
        }
    }
    // Cell types, as in the cell-type annotation's cell_types.parquet (rows by p, as the page lists them).
    let page = driver.script(
        "return [...document.querySelectorAll('#cell-types tr[data-label]')].map(r => [...r.cells].map(c => c.textContent).concat([r.dataset.p]));",
    );
    let page = page.as_array().cloned().unwrap_or_default();
    assert_eq!(
        page.len(),
        ct_feature0.len(),
        "cell types of blocks.1 feature 0: {page:?}"
    );
    assert!(
        page.iter().any(|r| r[0] == json!("planted")),
        "the planted label is enriched: {page:?}"
    );
    for (cells, r) in page.iter().zip(&ct_feature0) {
        assert_eq!(cells[0], json!(text(get(r, "label"))));
        // The page shows 3 significant digits below 1e-3. p is not stored: the page computes the
        // hypergeometric tail, which must agree with annotate's to far better than the 4 stored digits.
        for (k, col, tol) in [
            (1, "in_top", 0.0),
            (2, "top_size", 0.0),
            (3, "label_cells", 0.0),
            (4, "n_cells", 0.0),
            (5, "p_value", 1e-2),
            (6, "q_value", 1e-2),
            (7, "p_value", 1e-9),
        ] {
            let (a, b) = (shown(cells[k].as_str().unwrap()), float(get(r, col)));
            assert!(
                (a - b).abs() <= tol * b.abs(),
                "cell type {} {col}: page {a}, table {b}",
                text(get(r, "label"))
            );
        }
    }
    // Top cells, as in top_cells.parquet (ids from the cell dictionary, by rank).
    let page = driver.script(
        "return [...document.querySelectorAll('#top-cells tr')].slice(1).map(r => [...r.cells].map(c => c.textContent));",
    );
    let page = page.as_array().cloned().unwrap_or_default();
    let mut want: Vec<Vec<(String, Field)>> = parquet_rows(&fx.join("catalog-b1/top_cells.parquet"))
        .into_iter()
        .filter(|r| *get(r, "feature") == Field::Long(0))
        .collect();
    want.sort_by_key(|r| float(get(r, "rank")) as i64);
    assert!(
        !want.is_empty(),
        "the fixture has top cells of blocks.1 feature 0"
    );
    assert_eq!(page.len(), want.len(), "top cells: {page:?}");
    // mean_when_active is stored quantised (README "scinterp atlas", Files): the first cell's, s, to 4
    // significant digits, every other one as the nearest multiple of s / 255. The page must show exactly
    // that value (to its 4 displayed digits; one step is ≥ 0.39 % of a value, far above the display's
    // 0.05 %), which lies within s / 510 of the table's.
    let s4: f64 = format!("{:.3e}", float(get(&want[0], "mean_when_active")))
        .parse()
        .unwrap();
    for (k, (cells, r)) in page.iter().zip(&want).enumerate() {
        assert_eq!(shown(cells[0].as_str().unwrap()), float(get(r, "rank")) + 1.0);
        assert_eq!(cells[1], json!(text(get(r, "cell_id"))));
        assert_eq!(shown(cells[2].as_str().unwrap()), float(get(r, "n_active")));
        let (a, b) = (
            shown(cells[3].as_str().unwrap()),
            float(get(r, "mean_when_active")),
        );
        let stored = if k == 0 {
            s4
        } else {
            (b * 255.0 / s4).round() * s4 / 255.0
        };
        assert!(
            (a - stored).abs() <= 5e-4 * stored,
            "top cell {k} mean: page {a}, stored value {stored} (table {b})"
        );
        assert!(
            (a - b).abs() <= s4 / 510.0 + 5e-4 * a.abs(),
            "top cell {k} mean: page {a}, table {b}, beyond the documented rounding"
        );
    }
    let downstream =
        driver.script("return document.querySelectorAll('#edges-down tr[data-feature]').length;");
    assert!(
        downstream.as_u64().unwrap() >= 1,
        "blocks.1 feature 0 has downstream edges"
    );
    // Every number carries its definition on hover.
    let bare = driver.script("return [...document.querySelectorAll('.num')].filter(e => !e.title).length;");
    assert_eq!(bare, json!(0));
    let numbers = driver.script("return document.querySelectorAll('.num').length;");
    assert!(numbers.as_u64().unwrap() > 100, "{numbers}");
    driver.screenshot(&shots.join("feature.png"));

    // The circuit view.
    driver.click("#circuit-link");
    driver.wait_route("circuit/0/0");
    let nodes = driver.script("return document.querySelectorAll('#circuit .node').length;");
    let edges = driver.script("return document.querySelectorAll('#circuit path.edge').length;");
    assert!(
        nodes.as_u64().unwrap() >= 2 && edges.as_u64().unwrap() >= 1,
        "{nodes} nodes, {edges} edges"
    );
    driver.screenshot(&shots.join("circuit.png"));

    // Significant terms, as in enrichment.parquet: on feature 0 and on the first feature of blocks.1
    // that has any.
    let terms = parquet_rows(&fx.join("annotation/enrichment.parquet"));
    let in_b1 = |r: &&Vec<(String, Field)>| text(get(r, "catalog")) == "blocks.1.hook_resid_post";
    let with_terms = match terms.iter().filter(in_b1).map(|r| get(r, "feature")).next() {
        Some(Field::Long(f)) => *f,
        other => panic!("the fixture has terms on blocks.1: {other:?}"),
    };
    let mut computed_p = 0;
    for f in [0, with_terms] {
        driver.cmd(
            "POST",
            "/url",
            Some(json!({"url": format!("{index}#/feature/0/{f}")})),
        );
        driver.wait_route(&format!("feature/0/{f}"));
        let mut want: Vec<(String, f64, f64, String)> = terms
            .iter()
            .filter(|r| in_b1(r) && *get(r, "feature") == Field::Long(f))
            .map(|r| {
                let overlap = text(get(r, "overlap_genes")).replace(',', ", ");
                (
                    text(get(r, "term")),
                    float(get(r, "p_value")),
                    float(get(r, "fold_enrichment")),
                    overlap,
                )
            })
            .collect();
        want.sort_by(|a, b| a.1.total_cmp(&b.1));
        let page = driver.script(
            "return [...document.querySelectorAll('#terms tr[data-term]')].map(r => [r.dataset.term, r.cells[6].textContent, r.cells[9].textContent, r.cells[10].textContent, r.dataset.p]);",
        );
        let page = page.as_array().cloned().unwrap_or_default();
        assert_eq!(page.len(), want.len(), "terms of blocks.1 feature {f}: {page:?}");
        for (p, (term, pv, fold, overlap)) in page.iter().zip(&want) {
            assert_eq!(p[0], json!(term));
            let shown_p = shown(p[1].as_str().unwrap());
            assert!(
                (shown_p - pv).abs() <= 1e-2 * pv.abs(),
                "{term}: page p {shown_p}, table {pv}"
            );
            // The page's own p: stored (annotate's to 4 digits), or, where the builder left it out, the
            // hypergeometric tail the page computes from the row's counts, which must agree with annotate's
            // far beyond those 4 digits.
            let page_p: f64 = p[4].as_str().unwrap().parse().unwrap();
            let stored: f64 = format!("{pv:.3e}").parse().unwrap();
            if (page_p - pv).abs() <= 1e-9 * pv.abs() {
                computed_p += 1;
            } else {
                assert_eq!(page_p, stored, "{term}: page p {page_p}, table {pv}");
            }
            // fold_enrichment (derived on the page where not stored) and the overlap genes (stored as
            // indices of the top-gene rows) read as in the table.
            let shown_fold = shown(p[2].as_str().unwrap());
            assert!(
                (shown_fold - fold).abs() <= 1e-3 * fold.abs(),
                "{term}: page fold {shown_fold}, table {fold}"
            );
            assert_eq!(p[3], json!(overlap), "{term}: overlap genes");
        }
    }

    assert!(computed_p > 0, "no term p computed by the page");

    // The layer explorer: the table filters by text and sorts by a click.
    driver.cmd("POST", "/url", Some(json!({"url": format!("{index}#/layer/1")})));
    driver.wait_route("layer/1");
    let all = driver.script("return document.querySelectorAll('#ftable-table tbody tr').length;");
    driver.type_into("#f-text", "PLANTED_PROGRAM_01");
    let some = driver.script("return document.querySelectorAll('#ftable-table tbody tr').length;");
    assert!(
        some.as_u64() < all.as_u64() && some.as_u64() > Some(0),
        "{all} rows, {some} after the filter"
    );
    let shown_terms = driver.script(
        "return [...document.querySelectorAll('#ftable-table tbody tr')].every(r => r.textContent.includes('PLANTED_PROGRAM_01'));",
    );
    assert_eq!(shown_terms, json!(true));
    driver.screenshot(&shots.join("layer.png"));

    // Term search; consensus and tools say none.
    driver.cmd(
        "POST",
        "/url",
        Some(json!({"url": format!("{index}#/term/planted program 02")})),
    );
    driver.wait_route("term/");
    let hits = driver.script("return document.querySelectorAll('#term-hits-table tbody tr').length;");
    assert_eq!(hits, json!(1));
    for page in ["consensus", "tools"] {
        driver.cmd("POST", "/url", Some(json!({"url": format!("{index}#/{page}")})));
        driver.wait_route(page);
        let text = driver.script("return document.getElementById('main').textContent;");
        assert!(text.as_str().unwrap().contains("none"), "{page}: {text}");
    }

    let errors = driver.script("return window.atlas.errors;");
    assert_eq!(errors, json!([]), "the page reported errors");
    let severe = driver.severe_logs();
    assert!(severe.is_empty(), "console errors: {severe:?}");

    // Data of another format version (a site mixed from two builds): the page says so instead of
    // misreading it.
    std::fs::write(
        site.join("data/atlas.js"),
        "atlas.receive(\"atlas\",{\"format\":\"scinterp-atlas\",\"format_version\":3,\"title\":\"old\"});\n",
    )
    .unwrap();
    driver.cmd("POST", "/url", Some(json!({"url": "about:blank"})));
    driver.cmd("POST", "/url", Some(json!({"url": index})));
    let started = Instant::now();
    let message = loop {
        let m = driver
            .script("const e = document.querySelector('#main .error'); return e ? e.textContent : null;");
        if let Some(m) = m.as_str() {
            break m.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no error shown for format 3"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        message.contains("format 3") && message.contains("reads scinterp-atlas format 4"),
        "{message}"
    );
    drop(driver);

    let keep = std::env::var_os("SCINTERP_KEEP_SCREENSHOTS").is_some();
    for f in [
        "overview.png",
        "gene.png",
        "feature.png",
        "circuit.png",
        "layer.png",
    ] {
        let bytes = std::fs::read(shots.join(f)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{f} is a PNG");
    }
    if keep {
        let kept = tmp.keep();
        eprintln!("screenshots in {}", kept.join("screenshots").display());
    } else {
        eprintln!(
            "screenshots were in {} (set SCINTERP_KEEP_SCREENSHOTS=1 to keep them)",
            shots.display()
        );
    }
}
