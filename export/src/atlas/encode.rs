//! How data reaches the page: each data file is a script, `atlas.receive("<key>", <payload>);`, that the
//! page inserts as a `<script>` tag (browsers refuse fetch() of `file://` URLs, but load scripts). A payload
//! of more than a few hundred bytes is JSON compressed with zlib and written as `"y<pad>:<Z85>"`: the zlib
//! bytes, padded with `pad` (0–3) zero bytes to a multiple of 4, in Z85 (ZeroMQ's base-85 alphabet, which
//! has no quote or backslash: 5 characters per 4 bytes, against base64's 4 per 3); the page decodes it and
//! inflates it with the browser's DecompressionStream. (`"z:<base64>"` is read too.) Numbers are rounded to
//! 4 significant digits, what the page shows.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::ZlibEncoder;
use flate2::Compression;
use serde_json::{json, Map, Value};

use super::error::{AtlasError, Result};

/// Payloads shorter than this stay plain JSON (readable, and compression would not pay).
const COMPRESS_ABOVE: usize = 512;

/// A float rounded to 4 significant digits, as JSON (integers stay exact; NaN and ±inf become null).
pub fn num(x: f64) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        return Value::from(x as i64);
    }
    let rounded: f64 = format!("{x:.3e}").parse().unwrap_or(x);
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

/// A slice of floats as a JSON array of [`num`]s.
pub fn nums(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|&x| num(x)).collect())
}

/// Levels of a quantised top-cell mean: q = round(TOP_CELL_LEVELS · m / s) (one byte).
pub const TOP_CELL_LEVELS: f64 = 255.0;

/// A feature's top-cell `mean_when_active` values in rank order (highest first), quantised for the page: the
/// first rounded to 4 significant digits (s, as [`num`] stores it); each later one m_k to
/// q_k = round(255 · m_k / s), stored as the steps q_{k−1} − q_k down from q_0 = 255 (small non-negative
/// integers when the values do not rise). The page shows q_k · s / 255, within s / 510 of m_k. Returns
/// (s, steps), or None when the numbers should be stored as they are: no values, s not positive and finite,
/// or some q_k outside 0 … 255 (a value above s, negative or not finite).
pub fn quantise_top_cell_means(means: &[f64]) -> Option<(Value, Vec<i64>)> {
    let first = num(*means.first()?);
    let s = first.as_f64().filter(|s| s.is_finite() && *s > 0.0)?;
    let mut steps = Vec::with_capacity(means.len() - 1);
    let mut prev = TOP_CELL_LEVELS as i64;
    for &m in &means[1..] {
        let q = (TOP_CELL_LEVELS * m / s).round();
        if !(0.0..=TOP_CELL_LEVELS).contains(&q) {
            return None;
        }
        steps.push(prev - q as i64);
        prev = q as i64;
    }
    Some((first, steps))
}

/// The values the page shows for [`quantise_top_cell_means`]'s output (its decoder, for tests and checks).
pub fn dequantise_top_cell_means(s: f64, steps: &[i64]) -> Vec<f64> {
    let mut q = TOP_CELL_LEVELS as i64;
    let mut out = vec![s];
    for &d in steps {
        q -= d;
        out.push(q as f64 * s / TOP_CELL_LEVELS);
    }
    out
}

/// The record parts a detail shard stores column-wise, over all its features (the columns of one kind side
/// by side compress better than each record's short lists): `_g` (top genes whose record has just `id`,
/// `nf` and `m`), `_tc` (top cells with `c`, `a`, `s`, `q`), `_h` (histograms). Each holds `f` (the
/// features, in order), `n` (each one's rows) and the parts' lists one after another: n rows of `id`, `nf`,
/// `m`, `c`, `a` and `h`, n − 1 of `q`, n − it of `id`, and one `s`, `e` and `it` per feature (`it`: the
/// leading top genes the record leaves to the layer table's `top`, 0 where none). The top genes' `m`
/// (mean_when_fired, 4 significant digits) are exact decimals: with `e` the smallest decimal exponent of the
/// feature's values, each is an integer number of 10^e, and `m` holds the first of these integers and then
/// the differences from the row before (in rank order the values fall, so these are small and ≥ 0).
/// `_t` holds the term rows (records whose rows all have one length L) as columns `t0` … `t{L−1}`, n rows
/// each (row j of a feature is [t0[at + j], t1[at + j], …]); `_c` the cell types of records that have just
/// `l`, `k`, `q` (n rows each) and one `t`. A record in any other shape keeps its part.
const SHARD_PARTS: [(&str, &str); 5] = [("_g", "g"), ("_tc", "tc"), ("_h", "h"), ("_t", "t"), ("_c", "c")];

/// A number's shortest decimal form (digits, exponent): x = digits × 10^exponent.
fn decimal(x: f64) -> Option<(i64, i32)> {
    if !x.is_finite() {
        return None;
    }
    let text = format!("{x:e}");
    let (mantissa, exp) = text.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: i64 = format!("{int}{frac}").parse().ok()?;
    Some((digits, exp - frac.len() as i32))
}

/// Top genes' mean_when_fired values as (e, [first integer, then differences]) of integers of 10^e (see
/// [`SHARD_PARTS`]); None where a value is not a finite number or the integers would not be exact in f64.
fn decimal_steps(values: &[Value]) -> Option<(i32, Vec<Value>)> {
    let forms: Vec<(i64, i32)> = values
        .iter()
        .map(|v| decimal(v.as_f64()?))
        .collect::<Option<_>>()?;
    let e = forms.iter().map(|f| f.1).min()?;
    if e < -22 {
        return None;
    }
    let mut out = Vec::with_capacity(forms.len());
    let mut prev = 0i64;
    for (k, (digits, exp)) in forms.into_iter().enumerate() {
        let n = digits.checked_mul(10i64.checked_pow(u32::try_from(exp - e).ok()?)?)?;
        if n.unsigned_abs() >= 1 << 53 {
            return None;
        }
        out.push(Value::from(if k == 0 { n } else { prev - n }));
        prev = n;
    }
    Some((e, out))
}

/// The value of n × 10^e, as a JSON number (an integer where it is one), as the page computes it: the
/// correctly rounded quotient n / 10^−e, which is the double nearest the decimal.
fn from_decimal(n: i64, e: i64) -> Value {
    if e >= 0 {
        if let Some(x) = 10i64.checked_pow(e as u32).and_then(|p| n.checked_mul(p)) {
            return Value::from(x);
        }
    }
    let x: f64 = format!("{n}e{e}").parse().unwrap_or(f64::NAN);
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        return Value::from(x as i64);
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The lists of a record part as the shard stores them (name, rows: n, n − 1 or a single value), or None
/// when the part has another shape (then the record keeps it).
fn part_lists(name: &str, part: &Value) -> Option<(usize, Vec<(String, Value)>)> {
    let list_len = |v: &Value| v.as_array().map(Vec::len);
    let named = |v: Vec<(&str, Value)>| v.into_iter().map(|(k, x)| (k.to_string(), x)).collect();
    match name {
        "h" => Some((list_len(part)?, named(vec![("h", part.clone())]))),
        "t" => {
            let rows = part.as_array()?;
            let width = list_len(rows.first()?)?;
            if width == 0 || !rows.iter().all(|r| list_len(r) == Some(width)) {
                return None;
            }
            let cols = (0..width)
                .map(|j| {
                    (
                        format!("t{j}"),
                        Value::Array(rows.iter().map(|r| r[j].clone()).collect()),
                    )
                })
                .collect();
            Some((rows.len(), cols))
        }
        "c" => {
            let o = part.as_object()?;
            let n = list_len(o.get("l")?)?;
            let ok = o.len() == 4
                && n > 0
                && ["k", "q"].iter().all(|k| o.get(*k).and_then(list_len) == Some(n))
                && o.get("t").is_some_and(Value::is_number);
            ok.then(|| (n, named(["l", "k", "q", "t"].map(|k| (k, o[k].clone())).to_vec())))
        }
        "g" => {
            let o = part.as_object()?;
            let n = list_len(o.get("m")?)?;
            let it = match o.get("it") {
                Some(v) => usize::try_from(v.as_u64()?).ok()?,
                None => 0,
            };
            let ok = o.len() == 3 + usize::from(o.contains_key("it"))
                && n > 0
                && it <= n
                && o.get("nf").and_then(list_len) == Some(n)
                && o.get("id").and_then(list_len) == Some(n - it);
            if !ok {
                return None;
            }
            let (e, m) = decimal_steps(o["m"].as_array()?)?;
            Some((
                n,
                named(vec![
                    ("id", o["id"].clone()),
                    ("nf", o["nf"].clone()),
                    ("m", Value::Array(m)),
                    ("e", Value::from(e)),
                    ("it", Value::from(it)),
                ]),
            ))
        }
        _ => {
            let o = part.as_object()?;
            let n = list_len(o.get("c")?)?;
            let ok = o.len() == 4
                && n > 0
                && o.get("a").and_then(list_len) == Some(n)
                && o.get("q").and_then(list_len) == Some(n - 1)
                && o.get("s").is_some_and(Value::is_number);
            ok.then(|| (n, named(["c", "a", "s", "q"].map(|k| (k, o[k].clone())).to_vec())))
        }
    }
}

/// A detail shard's records (feature → record) with [`SHARD_PARTS`] moved into shard columns.
pub fn columnise(mut records: Map<String, Value>) -> Map<String, Value> {
    let mut features: Vec<(u64, String)> = records
        .keys()
        .filter_map(|k| Some((k.parse().ok()?, k.clone())))
        .collect();
    features.sort_unstable();
    let mut out = Map::new();
    for (key, name) in SHARD_PARTS {
        let mut cols: Map<String, Value> = Map::new();
        let mut push = |col: &str, v: Value| match cols.entry(col).or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(a) => a.push(v),
            _ => unreachable!("shard columns are lists"),
        };
        for (f, k) in &features {
            let Some(rec) = records.get_mut(k).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some((n, lists)) = rec.get(name).and_then(|p| part_lists(name, p)) else {
                continue;
            };
            push("f", Value::from(*f));
            push("n", Value::from(n));
            for (col, v) in lists {
                match v {
                    Value::Array(xs) => xs.into_iter().for_each(|x| push(&col, x)),
                    x => push(&col, x),
                }
            }
            rec.remove(name);
        }
        if !cols.is_empty() {
            out.insert(key.to_string(), Value::Object(cols));
        }
    }
    for (k, rec) in records {
        if !rec.as_object().is_some_and(Map::is_empty) {
            out.insert(k, rec);
        }
    }
    out
}

/// A detail shard as its records (feature → record): [`columnise`] undone, as the page does on loading it.
/// Any other value is returned as it is.
pub fn records(shard: &Value) -> Value {
    let Some(obj) = shard.as_object() else {
        return shard.clone();
    };
    let mut out: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, name) in SHARD_PARTS {
        let Some(cols) = obj.get(key) else { continue };
        let list = |c: &str| {
            cols.get(c)
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
        };
        let (mut at, mut at_q, mut at_id) = (0usize, 0usize, 0usize);
        for (j, f) in list("f").iter().enumerate() {
            let n = list("n").get(j).and_then(Value::as_u64).unwrap_or(0) as usize;
            let rows = |c: &str, from: usize, len: usize| {
                Value::Array(list(c).iter().skip(from).take(len).cloned().collect())
            };
            let part = match name {
                "h" => rows("h", at, n),
                "t" => {
                    let cols: Vec<&[Value]> = (0..)
                        .map_while(|c| cols.get(format!("t{c}")))
                        .filter_map(Value::as_array)
                        .map(Vec::as_slice)
                        .collect();
                    Value::Array(
                        (at..at + n)
                            .map(|r| {
                                Value::Array(
                                    cols.iter()
                                        .map(|c| c.get(r).cloned().unwrap_or(Value::Null))
                                        .collect(),
                                )
                            })
                            .collect(),
                    )
                }
                "c" => {
                    json!({"l": rows("l", at, n), "k": rows("k", at, n), "q": rows("q", at, n), "t": list("t").get(j).cloned().unwrap_or(Value::Null)})
                }
                "g" => {
                    let e = list("e").get(j).and_then(Value::as_i64).unwrap_or(0);
                    let it = list("it").get(j).and_then(Value::as_u64).unwrap_or(0) as usize;
                    let ids = rows("id", at_id, n.saturating_sub(it));
                    at_id += n.saturating_sub(it);
                    let mut v = 0i64;
                    let m: Vec<Value> = (0..n)
                        .map(|k| {
                            let d = list("m").get(at + k).and_then(Value::as_i64).unwrap_or(0);
                            v = if k == 0 { d } else { v - d };
                            from_decimal(v, e)
                        })
                        .collect();
                    let mut g = json!({"id": ids, "nf": rows("nf", at, n), "m": m});
                    if it > 0 {
                        g["it"] = Value::from(it);
                    }
                    g
                }
                _ => {
                    let q = rows("q", at_q, n.saturating_sub(1));
                    at_q += n.saturating_sub(1);
                    json!({"c": rows("c", at, n), "a": rows("a", at, n), "s": list("s").get(j).cloned().unwrap_or(Value::Null), "q": q})
                }
            };
            at += n;
            let rec = out
                .entry(f.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(rec) = rec.as_object_mut() {
                rec.insert(name.to_string(), part);
            }
        }
    }
    Value::Object(out)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 (the earlier payload encoding, which `read_script` still reads); kept to test that reader.
#[cfg(test)]
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(B64[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Z85 of `bytes` padded with zeros to a multiple of 4; returns (text, pad).
pub fn z85(bytes: &[u8]) -> (String, usize) {
    let pad = (4 - bytes.len() % 4) % 4;
    let mut out = String::with_capacity((bytes.len() + pad) / 4 * 5);
    for chunk in bytes.chunks(4) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        let mut n = u32::from_be_bytes(b);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = Z85[(n % 85) as usize];
            n /= 85;
        }
        out.extend(digits.iter().map(|&d| d as char));
    }
    (out, pad)
}

fn unz85(s: &str, pad: usize) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(5) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 5 * 4);
    for chunk in s.as_bytes().chunks(5) {
        let mut n: u64 = 0;
        for &c in chunk {
            n = n * 85 + Z85.iter().position(|&z| z == c)? as u64;
        }
        out.extend_from_slice(&u32::try_from(n).ok()?.to_be_bytes());
    }
    out.truncate(out.len().checked_sub(pad)?);
    Some(out)
}

/// The script text of one data file.
pub fn script(key: &str, payload: &Value) -> String {
    let json = payload.to_string();
    let key = serde_json::to_string(key).unwrap_or_default();
    if json.len() <= COMPRESS_ABOVE {
        return format!("atlas.receive({key},{json});\n");
    }
    let mut z = ZlibEncoder::new(Vec::with_capacity(json.len() / 4), Compression::new(6));
    // Writing to a Vec cannot fail.
    let _ = z.write_all(json.as_bytes());
    let bytes = z.finish().unwrap_or_default();
    let (text, pad) = z85(&bytes);
    format!("atlas.receive({key},\"y{pad}:{text}\");\n")
}

/// Writes `text` to `dir/rel`, creating folders; returns the bytes written.
pub fn write_file(dir: &Path, rel: &str, text: &[u8]) -> Result<u64> {
    let path: PathBuf = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| AtlasError::io(parent, e))?;
    }
    std::fs::write(&path, text).map_err(|e| AtlasError::io(&path, e))?;
    Ok(text.len() as u64)
}

/// Decodes a data file written by [`script`] back to its key and JSON (for tests and checks).
pub fn read_script(text: &str) -> Option<(String, Value)> {
    use std::io::Read;
    let body = text.trim().strip_prefix("atlas.receive(")?.strip_suffix(");")?;
    let (key, rest) = body.split_once(',')?;
    let key: String = serde_json::from_str(key).ok()?;
    let payload: Value = serde_json::from_str(rest).ok()?;
    let packed = payload.as_str().and_then(|s| {
        if let Some(z) = s.strip_prefix("z:") {
            return unbase64(z);
        }
        let (pad, z) = s.strip_prefix('y')?.split_once(':')?;
        unz85(z, pad.parse().ok()?)
    });
    if let Some(bytes) = packed {
        let mut json = String::new();
        flate2::read::ZlibDecoder::new(&bytes[..])
            .read_to_string(&mut json)
            .ok()?;
        return Some((key, serde_json::from_str(&json).ok()?));
    }
    Some((key, payload))
}

fn unbase64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_columns_give_back_the_records() {
        let want = json!({
            "128": {"g": {"id": [9], "it": 1, "nf": [3, 1], "m": [2.5, 1.25]}, "tc": {"c": [7, 3, 8], "a": [2, 2, 1], "s": 4.5, "q": [1, 0]}, "h": [3, 1, 2], "s": [1]},
            "130": {"tc": {"c": [1], "a": [4], "s": 0.5, "q": []}, "h": [0]},
            "129": {"g": {"id": [1], "nf": [2], "m": [0.5], "cm": [0]}, "t": [[1, 2], [3]], "tc": {"c": [2, 4], "a": [1, 1], "m": [1.0, 2.0]}, "c": {"l": [1], "k": [2], "t": [3, 4], "q": [0.5]}},
            "131": {"t": [[4, "a,b", null], [5, [0, 1], 0.5]], "c": {"l": [1, 0], "k": [5, 3], "t": 9, "q": [0.25, 0.5]}},
            "135": {"g": {"id": [7], "nf": [1], "m": [3]}},
        });
        let Value::Object(map) = want.clone() else {
            unreachable!()
        };
        let cols = columnise(map);
        // Features in numeric order, each list one feature after another; other shapes stay in the record.
        // m: integers of 10^e (2.5 = 250 × 10^−2, 1.25 = 125 × 10^−2), the first and then the steps down.
        assert_eq!(
            cols["_g"],
            json!({"f": [128, 135], "n": [2, 1], "id": [9, 7], "it": [1, 0], "nf": [3, 1, 1], "m": [250, 125, 3], "e": [-2, 0]})
        );
        assert_eq!(
            cols["_tc"],
            json!({"f": [128, 130], "n": [3, 1], "c": [7, 3, 8, 1], "a": [2, 2, 1, 4], "s": [4.5, 0.5], "q": [1, 0]})
        );
        assert_eq!(
            cols["_h"],
            json!({"f": [128, 130], "n": [3, 1], "h": [3, 1, 2, 0]})
        );
        assert_eq!(cols["128"], json!({"s": [1]}));
        // Term rows as columns t0 … t2 (rows of one length only), cell types with one top_size.
        assert_eq!(
            cols["_t"],
            json!({"f": [131], "n": [2], "t0": [4, 5], "t1": ["a,b", [0, 1]], "t2": [null, 0.5]})
        );
        assert_eq!(
            cols["_c"],
            json!({"f": [131], "n": [2], "l": [1, 0], "k": [5, 3], "q": [0.25, 0.5], "t": [9]})
        );
        assert!(
            ["130", "131", "135"].iter().all(|k| cols.get(*k).is_none()),
            "emptied records are left out"
        );
        assert_eq!(cols["129"], want["129"]);
        assert_eq!(records(&Value::Object(cols)), want);
        // A shard without columns reads as it is.
        assert_eq!(records(&json!({"3": {"t": []}})), json!({"3": {"t": []}}));
    }

    #[test]
    fn top_gene_means_as_decimal_steps_read_back_exactly() {
        // Values as num() stores them, falling over several decades, as a conditional-mean list does.
        let values: Vec<Value> = (0..2000)
            .map(|i| num(9876.5 * (-(i as f64) / 97.0).exp() + 1e-7 * i as f64))
            .chain([num(0.0), num(12345.0)])
            .collect();
        for chunk in values.chunks(20) {
            let (e, steps) = decimal_steps(chunk).unwrap();
            let mut v = 0i64;
            for (k, (want, d)) in chunk.iter().zip(&steps).enumerate() {
                let d = d.as_i64().unwrap();
                if k > 0 && chunk[k - 1].as_f64() >= want.as_f64() {
                    assert!(d >= 0, "falling values give steps ≥ 0");
                }
                v = if k == 0 { d } else { v - d };
                let got = from_decimal(v, i64::from(e));
                assert_eq!(
                    got.as_f64().unwrap().to_bits(),
                    want.as_f64().unwrap().to_bits(),
                    "{want}"
                );
            }
        }
        assert_eq!(decimal(0.5127), Some((5127, -4)));
        let tiny = [num(3.5e-19), num(1.25e-20)];
        let (e, steps) = decimal_steps(&tiny).unwrap();
        assert_eq!((e, steps), (-22, vec![json!(3500), json!(3375)]));
        assert_eq!(decimal(-2.0e-3), Some((-2, -3)));
        // Not representable: non-numbers, and integers that would not be exact in f64.
        assert_eq!(decimal_steps(&[json!(1.0), Value::Null]), None);
        assert_eq!(decimal_steps(&[json!(1.0e10), json!(1.0e-10)]), None);
    }

    #[test]
    fn top_cell_means_are_within_half_a_step_of_the_first() {
        // Descending values over two decades, as a feature's top cells hold them.
        let mut means: Vec<f64> = (0..400).map(|i| 7.31 * (-(i as f64) / 90.0).exp()).collect();
        means[1] = means[0]; // a tie with the first
        let (s, steps) = quantise_top_cell_means(&means).unwrap();
        let s = s.as_f64().unwrap();
        assert_eq!(s, 7.31, "the first keeps 4 significant digits");
        assert_eq!(steps.len(), means.len() - 1);
        assert!(steps.iter().all(|&d| d >= 0), "falling values give steps ≥ 0");
        let shown = dequantise_top_cell_means(s, &steps);
        let worst = means
            .iter()
            .zip(&shown)
            .map(|(m, x)| (m - x).abs())
            .fold(0.0, f64::max);
        // The documented bound s / 510 holds, and it is the precision there is (not far finer).
        assert!(worst <= s / 510.0 * (1.0 + 1e-12), "{worst}");
        assert!(worst > s / 600.0, "{worst}");
        // Each value is the nearest multiple of s / 255.
        for (m, x) in means.iter().zip(&shown).skip(1) {
            let q = (x * 255.0 / s).round();
            assert!((x - q * s / 255.0).abs() < 1e-12 && (m * 255.0 / s - q).abs() <= 0.5 + 1e-9);
        }
        // One value: no steps.
        assert_eq!(
            quantise_top_cell_means(&[0.5]),
            Some((serde_json::json!(0.5), vec![]))
        );
    }

    #[test]
    fn top_cell_means_that_do_not_fit_are_stored_as_numbers() {
        for means in [
            vec![],
            vec![0.0, 0.0],
            vec![-1.0, -2.0],
            vec![1.0, 1.01],
            vec![1.0, -0.01],
            vec![1.0, f64::NAN],
            vec![f64::INFINITY, 1.0],
        ] {
            assert_eq!(quantise_top_cell_means(&means), None, "{means:?}");
        }
        // Within the rounding of the first to 4 digits a later value may exceed it: it becomes 255.
        let (s, steps) = quantise_top_cell_means(&[2.00049, 2.0005]).unwrap();
        assert_eq!((s, steps), (serde_json::json!(2.0), vec![0]));
        // Rising values give negative steps, which decode all the same.
        let (s, steps) = quantise_top_cell_means(&[1.0, 0.2, 0.6]).unwrap();
        assert_eq!(steps, vec![204, -102]);
        assert_eq!(
            dequantise_top_cell_means(s.as_f64().unwrap(), &steps),
            vec![1.0, 51.0 / 255.0, 153.0 / 255.0]
        );
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(num(3.0), Value::from(3));
        assert_eq!(num(0.000123456), serde_json::json!(0.0001235));
        assert_eq!(num(-98765.4321), serde_json::json!(-98770.0));
        assert_eq!(num(1.23456e-300), serde_json::json!(1.235e-300));
        assert_eq!(num(f64::NAN), Value::Null);
        assert_eq!(num(f64::INFINITY), Value::Null);
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(unbase64("Zm9vYmE=").unwrap(), b"fooba");
    }

    #[test]
    fn z85_round_trips_every_padding() {
        // The ZeroMQ specification's test vector.
        let hello = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(z85(&hello), ("HelloWorld".to_string(), 0));
        for n in 0..9 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 97 + 255) as u8).collect();
            let (text, pad) = z85(&bytes);
            assert_eq!(text.len(), (n + pad) / 4 * 5);
            assert_eq!(unz85(&text, pad).unwrap(), bytes, "{n} bytes");
        }
        assert_eq!(unz85("Hell", 0), None, "a length not a multiple of 5");
        assert_eq!(unz85("#####", 0), None, "above 2^32");
    }

    #[test]
    fn scripts_round_trip_small_and_compressed() {
        let small = serde_json::json!({"a": [1, 2.5, null]});
        let text = script("k", &small);
        assert!(text.starts_with("atlas.receive(\"k\",{"), "{text}");
        assert_eq!(read_script(&text).unwrap(), ("k".to_string(), small));
        let big = serde_json::json!({"xs": (0..1000).collect::<Vec<_>>(), "name": "ä\"</script>"});
        let text = script("L0/d1", &big);
        assert!(text.contains("\"y"), "large payloads are compressed");
        assert!(!text.contains('\\'), "Z85 needs no escapes");
        assert_eq!(read_script(&text).unwrap(), ("L0/d1".to_string(), big));
    }
}
