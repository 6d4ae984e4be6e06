//! The `.npy` format (NumPy's own, version 1.0): scinterp's stores are plain `.npy` files so that
//! `np.load(path, mmap_mode="r")` opens them. The header is padded so the data starts at a multiple of
//! 64 bytes, which keeps memory-mapped rows aligned for vector loads.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
const ALIGN: usize = 64;

/// An `.npy` file that cannot be read, or whose header or length is wrong; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: too short to be an .npy file", .0.display())]
    TooShort(PathBuf),
    #[error("{}: not an .npy file (bad magic)", .0.display())]
    BadMagic(PathBuf),
    #[error("{}: truncated header", .0.display())]
    TruncatedHeader(PathBuf),
    #[error("{}: unsupported .npy version {version}", path.display())]
    Version { path: PathBuf, version: u8 },
    #[error("{}: implausible header length {len}", path.display())]
    HeaderLength { path: PathBuf, len: usize },
    #[error("{}: header has no descr", .0.display())]
    NoDescr(PathBuf),
    #[error("{}: element type {descr} is not one scinterp stores", path.display())]
    Dtype { path: PathBuf, descr: String },
    #[error("{}: Fortran-order arrays are not supported", .0.display())]
    FortranOrder(PathBuf),
    #[error("{}: header has no shape", .0.display())]
    NoShape(PathBuf),
    #[error("{}: bad shape ({shape})", path.display())]
    BadShape { path: PathBuf, shape: String },
    #[error(
        "{}: its shape ({shape}) announces more bytes than can be addressed (corrupt header)",
        path.display()
    )]
    ShapeOverflow { path: PathBuf, shape: String },
    #[error(
        "{}: holds {got} data bytes but its header announces {want} (truncated or corrupt file)",
        path.display()
    )]
    DataLength { path: PathBuf, got: usize, want: usize },
}

impl NpyError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            NpyError::Read { path, .. }
            | NpyError::Version { path, .. }
            | NpyError::HeaderLength { path, .. }
            | NpyError::Dtype { path, .. }
            | NpyError::BadShape { path, .. }
            | NpyError::ShapeOverflow { path, .. }
            | NpyError::DataLength { path, .. } => path,
            NpyError::TooShort(path)
            | NpyError::BadMagic(path)
            | NpyError::TruncatedHeader(path)
            | NpyError::NoDescr(path)
            | NpyError::FortranOrder(path)
            | NpyError::NoShape(path) => path,
        }
    }

    /// What is wrong, without the file's name (for messages that name it already).
    pub fn reason(&self) -> String {
        match self {
            NpyError::Read { source, .. } => format!("cannot read: {source}"),
            other => {
                let text = other.to_string();
                let prefix = format!("{}: ", other.path().display());
                text.strip_prefix(&prefix).map(str::to_string).unwrap_or(text)
            }
        }
    }
}

/// Element types scinterp stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F16,
    I32,
    I64,
    I16,
    U16,
}

impl NpyDtype {
    pub fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::F16 => "<f2",
            NpyDtype::I32 => "<i4",
            NpyDtype::I64 => "<i8",
            NpyDtype::I16 => "<i2",
            NpyDtype::U16 => "<u2",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            NpyDtype::F32 | NpyDtype::I32 => 4,
            NpyDtype::I64 => 8,
            NpyDtype::F16 | NpyDtype::I16 | NpyDtype::U16 => 2,
        }
    }

    fn from_descr(descr: &str) -> Option<Self> {
        [
            NpyDtype::F32,
            NpyDtype::F16,
            NpyDtype::I32,
            NpyDtype::I64,
            NpyDtype::I16,
            NpyDtype::U16,
        ]
        .into_iter()
        .find(|d| d.descr() == descr)
    }
}

/// The header of an `.npy` file: element type, C-order shape, and where the data starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

impl NpyHeader {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Header bytes (magic, version, length, dict, padding) for `dtype` and `shape`.
pub fn header_bytes(dtype: NpyDtype, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        dtype.descr()
    );
    // magic (6) + version (2) + header length (2) + dict + '\n', padded with spaces to ALIGN.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(ALIGN) - unpadded));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes a whole array (`bytes` little-endian, C order) to `path`, atomically (temporary name,
/// fsync, rename).
pub fn write_npy(path: &Path, dtype: NpyDtype, shape: &[usize], bytes: &[u8]) -> std::io::Result<()> {
    let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
    if bytes.len() != expected {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes for shape {shape:?} of {}", bytes.len(), dtype.descr()),
        ));
    }
    let mut file = crate::formats::AtomicFile::create(path)?;
    let mut w = BufWriter::new(file.file());
    w.write_all(&header_bytes(dtype, shape))?;
    w.write_all(bytes)?;
    w.flush()?;
    drop(w);
    Ok(file.commit()?)
}

/// Reads and checks the header of an `.npy` file (versions 1–3, little-endian, C order).
pub fn read_header(path: &Path) -> Result<NpyHeader, NpyError> {
    let p = || path.to_path_buf();
    let mut file = File::open(path).map_err(|source| NpyError::Read { path: p(), source })?;
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix[..10])
        .map_err(|_| NpyError::TooShort(p()))?;
    if &prefix[..6] != MAGIC {
        return Err(NpyError::BadMagic(p()));
    }
    let (len, start) = match prefix[6] {
        1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10),
        2 | 3 => {
            file.read_exact(&mut prefix[10..12])
                .map_err(|_| NpyError::TruncatedHeader(p()))?;
            (
                u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize,
                12,
            )
        }
        version => return Err(NpyError::Version { path: p(), version }),
    };
    if len > 1 << 20 {
        return Err(NpyError::HeaderLength { path: p(), len });
    }
    let mut dict = vec![0u8; len];
    file.read_exact(&mut dict)
        .map_err(|_| NpyError::TruncatedHeader(p()))?;
    let dict = String::from_utf8_lossy(&dict);
    let field = |key: &str| -> Option<String> {
        let at = dict.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = dict[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr")
        .and_then(|r| {
            r.strip_prefix('\'')
                .and_then(|r| r.split('\'').next().map(str::to_string))
        })
        .ok_or_else(|| NpyError::NoDescr(p()))?;
    let dtype = NpyDtype::from_descr(&descr).ok_or_else(|| NpyError::Dtype {
        path: p(),
        descr: descr.clone(),
    })?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(NpyError::FortranOrder(p()));
    }
    let shape_text = field("shape")
        .and_then(|r| {
            r.strip_prefix('(')
                .and_then(|r| r.split(')').next().map(str::to_string))
        })
        .ok_or_else(|| NpyError::NoShape(p()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>().map_err(|_| NpyError::BadShape {
                path: p(),
                shape: shape_text.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every caller multiplies the shape out; a header announcing more bytes than a machine can address
    // is damage, not an array (found by fuzzing: the product overflowed).
    if shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
        .is_none()
    {
        return Err(NpyError::ShapeOverflow {
            path: p(),
            shape: shape_text,
        });
    }
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset: start + len,
    })
}

/// Reads a whole 1-D or N-D array as raw little-endian bytes, checking the file length.
pub fn read_npy_bytes(path: &Path) -> Result<(NpyHeader, Vec<u8>), NpyError> {
    let header = read_header(path)?;
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let need = header.numel() * header.dtype.size_in_bytes();
    let data = bytes.get(header.data_offset..).unwrap_or(&[]);
    if data.len() != need {
        return Err(NpyError::DataLength {
            path: path.to_path_buf(),
            got: data.len(),
            want: need,
        });
    }
    Ok((header, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_aligns_the_data() {
        let dir = std::env::temp_dir().join(format!("scinterp-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let values: Vec<i64> = vec![0, 5, 9, -3];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_npy(&path, NpyDtype::I64, &[2, 2], &bytes).unwrap();
        let (h, data) = read_npy_bytes(&path).unwrap();
        assert_eq!((h.dtype, h.shape.clone()), (NpyDtype::I64, vec![2, 2]));
        assert_eq!(h.data_offset % ALIGN, 0);
        assert_eq!(data, bytes);
        write_npy(&path, NpyDtype::F32, &[3], &[0u8; 12]).unwrap();
        assert_eq!(read_header(&path).unwrap().shape, vec![3]);
        assert!(write_npy(&path, NpyDtype::F32, &[3], &[0u8; 8]).is_err());
        // Truncation is detected.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 4]).unwrap();
        assert!(read_npy_bytes(&path)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&path, b"not npy").unwrap();
        assert!(read_header(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_are_typed_and_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        std::fs::write(&path, b"not an npy file at all").unwrap();
        let e = read_header(&path).unwrap_err();
        assert!(matches!(&e, NpyError::BadMagic(p) if p == &path));
        assert_eq!(
            e.to_string(),
            format!("{}: not an .npy file (bad magic)", path.display())
        );
        let missing = dir.path().join("missing.npy");
        assert!(matches!(read_npy_bytes(&missing), Err(NpyError::Read { path, .. }) if path == missing));
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn the_reason_leaves_the_file_name_out() {
        let p = PathBuf::from("/data/acts/rows.npy");
        assert_eq!(NpyError::TruncatedHeader(p.clone()).reason(), "truncated header");
        let e = NpyError::DataLength {
            path: p.clone(),
            got: 3,
            want: 8,
        };
        assert_eq!(e.path(), p.as_path());
        assert!(e.reason().starts_with("holds 3 data bytes"), "{}", e.reason());
        let read = NpyError::Read {
            path: p,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(!read.reason().contains("rows.npy"), "{}", read.reason());
    }
}
