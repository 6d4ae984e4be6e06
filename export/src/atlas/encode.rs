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
use serde_json::Value;

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
