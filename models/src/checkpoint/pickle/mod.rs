//! A pickle reader that never executes code.
//!
//! Python's pickle format is a small stack machine whose programs may import and call arbitrary
//! functions. This module implements the part of that machine that PyTorch state dicts
//! (`data.pkl` inside a `torch.save` zip) and the Geneformer dictionary pickles need, and nothing
//! more: the few globals they refer to are recognised by name from a fixed whitelist and interpreted
//! here (an `OrderedDict`, a tensor view, a numpy scalar); any other global is an error.
//!
//! Objects live in an arena while the program runs, so that memo references (`BINGET`) and later
//! mutations (`SETITEMS` on a memoised dict, `BUILD` on a memoised numpy dtype) see the same object,
//! exactly as in Python. The finished object graph is then copied into a plain [`Value`] tree, with
//! limits on depth and size so that a hostile file cannot make that copy explode.
//!
//! Every read is bounds-checked; truncated or malicious input gives a [`PickleError`] naming the
//! byte offset, never a panic or an allocation larger than the input.

mod fast;
mod op;
#[cfg(test)]
mod tests;
mod values;
mod vm;

use std::collections::HashMap;

use super::DType;

pub use fast::{f64_scalar_dict_entries, flat_dict_entries, load_flat_dict, FlatValue};
pub use values::{Global, StorageRef, TensorRef, Value};
pub use vm::load;

/// Hash maps of the VM: foldhash (seeded per process) is several times faster than SipHash on the
/// hundreds of thousands of short string keys of a dictionary pickle.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Deepest nesting accepted when copying the result out (also stops self-referencing containers).
const MAX_DEPTH: usize = 256;

/// What went wrong, for callers that react differently to a refused global than to corruption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PickleErrorKind {
    /// The input ends inside an opcode or before `STOP`.
    Truncated,
    /// An opcode this reader does not implement (the byte is given).
    UnsupportedOpcode(u8),
    /// A global (`module.name`) outside the whitelist; it is never imported.
    RefusedGlobal(String),
    /// The program is well-formed bytes but does not make sense (stack underflow, wrong types...).
    Malformed,
    /// The object graph is too deep or would expand to far more than the input's size.
    LimitExceeded,
}

/// A pickle that cannot be read, with the byte offset of the opcode at fault.
#[derive(Clone, Debug, thiserror::Error)]
#[error("pickle byte {offset}: {message}")]
pub struct PickleError {
    pub offset: usize,
    pub kind: PickleErrorKind,
    pub message: String,
}

/// Loads a pickle whose top-level object must be a dict, returning its entries in order.
pub fn load_dict(bytes: &[u8]) -> Result<Vec<(Value, Value)>, PickleError> {
    match load(bytes)? {
        Value::Dict(items) => Ok(items),
        other => Err(PickleError {
            offset: 0,
            kind: PickleErrorKind::Malformed,
            message: format!("expected a dict at the top level, found a {}", other.kind()),
        }),
    }
}

/// The `torch.<Name>Storage` class name of an element type.
pub fn storage_type_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "DoubleStorage",
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
    }
}
