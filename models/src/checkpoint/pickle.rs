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

use std::cell::Cell;
use std::collections::HashMap;

/// Hash maps of the VM: foldhash (seeded per process) is several times faster than SipHash on the
/// hundreds of thousands of short string keys of a dictionary pickle.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use super::DType;

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

/// A whitelisted global (a class or function named in the pickle), not yet applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`
    RebuildParameter,
    /// `torch.FloatStorage` and friends: the element type of a storage in a persistent id.
    StorageType(DType),
    /// `numpy.core.multiarray.scalar` (numpy < 2) or `numpy._core.multiarray.scalar` (numpy >= 2).
    NumpyScalar,
    /// `numpy.dtype`
    NumpyDtype,
}

impl Global {
    /// The Python name, for messages.
    pub fn python_name(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::StorageType(d) => format!("torch.{}", storage_type_name(d)),
            Global::NumpyScalar => "numpy.core.multiarray.scalar".into(),
            Global::NumpyDtype => "numpy.dtype".into(),
        }
    }
}

/// A storage named by a persistent id `('storage', torch.FloatStorage, key, location, numel)`.
/// Its bytes live outside the pickle (in a PyTorch zip: the record `<root>/data/<key>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    pub dtype: DType,
    pub key: String,
    /// Device the storage was saved from (`cpu`, `cuda:0`); the bytes are the same either way.
    pub location: String,
    /// Number of elements of `dtype` (not bytes).
    pub numel: usize,
}

/// A tensor view built by `torch._utils._rebuild_tensor_v2`. Offset and strides are in elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
    pub requires_grad: bool,
}

impl TensorRef {
    pub fn dtype(&self) -> DType {
        self.storage.dtype
    }
}

/// A decoded pickle object.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A `dict` or `OrderedDict`, in insertion order (a repeated key keeps its first position and
    /// its last value, as in Python).
    Dict(Vec<(Value, Value)>),
    /// A whitelisted global that the pickle referenced but did not call.
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// A `numpy.dtype` (little-endian or byte-order-free).
    NumpyDtype(DType),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::NumpyDtype(_) => "numpy dtype",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Integers (including numpy integer scalars, which decode to `Int`); not bools.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Floats, and integers widened to f64 (Python treats both as numbers).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&TensorRef> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The entries of a dict, in insertion order; `None` for anything else.
    pub fn into_dict(self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(items) => Some(items),
            _ => None,
        }
    }
}

/// Runs a pickle program and returns the object it builds. Never imports or calls anything.
pub fn load(bytes: &[u8]) -> Result<Value, PickleError> {
    let mut vm = Vm {
        input: bytes,
        pos: 0,
        op_start: 0,
        heap: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: FastMap::default(),
        // Hashing dict keys and copying out the object graph both walk shared objects again, so a
        // hostile file could make them cost far more than its size (a "billion laughs" list that
        // doubles at every step, a long string used as a key thousands of times). Legitimate files
        // share little (a numpy scalar, a key string): a budget proportional to the input is
        // generous for them.
        budget: Cell::new(bytes.len().saturating_mul(8).saturating_add(4096)),
    };
    let root = vm.run()?;
    vm.export(root, 0)
}

/// A fast path for the commonest dictionary pickle: one flat `dict` whose keys are strings and whose values
/// are strings or small ints (Geneformer's token, gene-name and Ensembl-mapping dictionaries), written with
/// protocol 2–5 framing and memo references. Returns the entries in file order (a repeated key appears
/// again, later entries win as in Python), or `None` for anything else (any other opcode, nesting, a
/// malformed or truncated input), in which case [`load_dict`] decides. It never executes code either.
pub fn load_flat_dict(bytes: &[u8]) -> Option<Vec<(String, Value)>> {
    Some(
        flat_dict_entries(bytes)?
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    FlatValue::Str(s) => Value::String(s.to_owned()),
                    FlatValue::Int(i) => Value::Int(i),
                };
                (k.to_owned(), v)
            })
            .collect(),
    )
}

/// A value of a flat dictionary pickle, borrowed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlatValue<'a> {
    Str(&'a str),
    Int(i64),
}

/// Shared by the fast paths: the next `n` bytes at `pos`, advancing it.
fn take_at<'a>(bytes: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = bytes.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    Some(s)
}

/// A little-endian unsigned integer of up to 8 bytes.
fn le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// The memo index operand of BINPUT/BINGET (`short`: 1 byte) or LONG_BINPUT/LONG_BINGET (4 bytes).
fn memo_index(bytes: &[u8], pos: &mut usize, short: bool) -> Option<usize> {
    Some(le(take_at(bytes, pos, if short { 1 } else { 4 })?) as usize)
}

/// BINPUT: the stack top stored at memo index `i`, an existing slot or the next free one (`None` for a gap).
fn memo_put<T>(memo: &mut Vec<T>, i: usize, top: T) -> Option<()> {
    match i.cmp(&memo.len()) {
        std::cmp::Ordering::Less => memo[i] = top,
        std::cmp::Ordering::Equal => memo.push(top),
        std::cmp::Ordering::Greater => return None,
    }
    Some(())
}

/// [`load_flat_dict`] without copying: the keys and string values borrow from `bytes`. Same entries, same
/// refusals (`None` for anything but a flat str → str / int dict).
pub fn flat_dict_entries(bytes: &[u8]) -> Option<Vec<(&str, FlatValue<'_>)>> {
    #[derive(Clone, Copy)]
    enum Item<'a> {
        Dict,
        Mark,
        Str(&'a str),
        Int(i64),
    }
    let mut pos = 0usize;
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: Vec<Item> = Vec::new();
    let mut out: Vec<(&str, FlatValue)> = Vec::new();
    // Memo references stand for copies of strings (as in `load_flat_dict`'s owned result): bound them by
    // the input's size, as `load` does.
    let mut budget = bytes.len().saturating_mul(8).saturating_add(4096);
    loop {
        let opcode = take_at(bytes, &mut pos, 1)?[0];
        match opcode {
            op::PROTO => {
                take_at(bytes, &mut pos, 1)?;
            }
            op::FRAME => {
                take_at(bytes, &mut pos, 8)?;
            }
            op::EMPTY_DICT => stack.push(Item::Dict),
            op::MARK => stack.push(Item::Mark),
            op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => {
                let width = match opcode {
                    op::SHORT_BINUNICODE => 1,
                    op::BINUNICODE => 4,
                    _ => 8,
                };
                let n = usize::try_from(le(take_at(bytes, &mut pos, width)?)).ok()?;
                stack.push(Item::Str(std::str::from_utf8(take_at(bytes, &mut pos, n)?).ok()?));
            }
            op::BININT1 => stack.push(Item::Int(i64::from(take_at(bytes, &mut pos, 1)?[0]))),
            op::BININT2 => stack.push(Item::Int(le(take_at(bytes, &mut pos, 2)?) as i64)),
            op::BININT => stack.push(Item::Int(i64::from(
                le(take_at(bytes, &mut pos, 4)?) as u32 as i32
            ))),
            op::MEMOIZE => memo.push(*stack.last()?),
            op::BINPUT | op::LONG_BINPUT => {
                let i = memo_index(bytes, &mut pos, opcode == op::BINPUT)?;
                memo_put(&mut memo, i, *stack.last()?)?;
            }
            op::BINGET | op::LONG_BINGET => {
                let i = memo_index(bytes, &mut pos, opcode == op::BINGET)?;
                let item = *memo.get(i)?;
                if let Item::Str(s) = item {
                    budget = budget.checked_sub(s.len())?;
                }
                stack.push(item);
            }
            op::SETITEMS | op::SETITEM => {
                let start = if opcode == op::SETITEMS {
                    let mark = stack.iter().rposition(|i| matches!(i, Item::Mark))?;
                    stack.remove(mark);
                    mark
                } else {
                    stack.len().checked_sub(2)?
                };
                if start == 0
                    || !matches!(stack[start - 1], Item::Dict)
                    || !(stack.len() - start).is_multiple_of(2)
                {
                    return None;
                }
                let mut items = stack.drain(start..);
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    let (Item::Str(k), v) = (k, v) else {
                        return None;
                    };
                    let v = match v {
                        Item::Str(s) => FlatValue::Str(s),
                        Item::Int(i) => FlatValue::Int(i),
                        _ => return None,
                    };
                    out.push((k, v));
                }
            }
            op::STOP => {
                return (pos == bytes.len() && matches!(stack.as_slice(), [Item::Dict])).then_some(out);
            }
            _ => return None,
        }
    }
}

/// A fast path for a flat `dict` of string keys and numpy `float64` scalars (Geneformer's median
/// dictionaries), borrowed from the bytes: the keys and values [`load_dict`] returns for such a file, in
/// file order. Only the exact shape numpy writes is taken: `numpy.core.multiarray.scalar` (or
/// `numpy._core.multiarray.scalar`) applied to `(dtype, 8 raw bytes)`, the dtype being
/// `numpy.dtype('f8' or '<f8', bool, bool)` with a `BUILD` state of 8 fields whose byte order is `<` or
/// `|`, and memo references to any of these. Anything else (another dtype or global, a big-endian byte
/// order, nesting, a malformed or truncated input) returns `None`, and [`load_dict`] decides. It never
/// executes code.
pub fn f64_scalar_dict_entries(bytes: &[u8]) -> Option<Vec<(&str, f64)>> {
    #[derive(Clone, Copy)]
    enum Item<'a> {
        Dict,
        Mark,
        None,
        Bool,
        Int,
        Str(&'a str),
        Bytes(&'a [u8]),
        ScalarFn,
        DtypeFn,
        /// `('f8', bool, bool)`.
        DtypeArgs,
        /// A little-endian float64 dtype.
        Dtype,
        /// A dtype state with its byte order.
        DtypeState(&'a str),
        /// `(dtype, raw)`.
        ScalarArgs(&'a [u8]),
        Float(f64),
    }
    let mut pos = 0usize;
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: Vec<Item> = Vec::new();
    let mut out: Vec<(&str, f64)> = Vec::new();
    loop {
        let opcode = take_at(bytes, &mut pos, 1)?[0];
        match opcode {
            op::PROTO => {
                take_at(bytes, &mut pos, 1)?;
            }
            op::FRAME => {
                take_at(bytes, &mut pos, 8)?;
            }
            op::EMPTY_DICT => stack.push(Item::Dict),
            op::MARK => stack.push(Item::Mark),
            op::NONE => stack.push(Item::None),
            op::NEWTRUE | op::NEWFALSE => stack.push(Item::Bool),
            op::BININT1 => {
                take_at(bytes, &mut pos, 1)?;
                stack.push(Item::Int);
            }
            op::BININT2 => {
                take_at(bytes, &mut pos, 2)?;
                stack.push(Item::Int);
            }
            op::BININT => {
                take_at(bytes, &mut pos, 4)?;
                stack.push(Item::Int);
            }
            op::SHORT_BINUNICODE | op::BINUNICODE => {
                let width = if opcode == op::SHORT_BINUNICODE { 1 } else { 4 };
                let n = usize::try_from(le(take_at(bytes, &mut pos, width)?)).ok()?;
                stack.push(Item::Str(std::str::from_utf8(take_at(bytes, &mut pos, n)?).ok()?));
            }
            op::SHORT_BINBYTES | op::BINBYTES => {
                let width = if opcode == op::SHORT_BINBYTES { 1 } else { 4 };
                let n = usize::try_from(le(take_at(bytes, &mut pos, width)?)).ok()?;
                stack.push(Item::Bytes(take_at(bytes, &mut pos, n)?));
            }
            op::STACK_GLOBAL => {
                let (Item::Str(name), Item::Str(module)) = (stack.pop()?, stack.pop()?) else {
                    return None;
                };
                stack.push(match (module, name) {
                    ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Item::ScalarFn,
                    ("numpy", "dtype") => Item::DtypeFn,
                    _ => return None,
                });
            }
            op::TUPLE3 => {
                let (Item::Bool, Item::Bool, Item::Str("f8" | "<f8")) =
                    (stack.pop()?, stack.pop()?, stack.pop()?)
                else {
                    return None;
                };
                stack.push(Item::DtypeArgs);
            }
            op::TUPLE2 => {
                let (Item::Bytes(raw), Item::Dtype) = (stack.pop()?, stack.pop()?) else {
                    return None;
                };
                stack.push(Item::ScalarArgs(raw));
            }
            op::TUPLE => {
                // The dtype state (version, byteorder, subarray, names, fields, elsize, alignment, flags).
                let mark = stack.iter().rposition(|i| matches!(i, Item::Mark))?;
                let state = match stack[mark + 1..] {
                    [Item::Int, Item::Str(order), Item::None, Item::None, Item::None, Item::Int, Item::Int, Item::Int] => {
                        Item::DtypeState(order)
                    }
                    _ => return None,
                };
                stack.truncate(mark);
                stack.push(state);
            }
            op::REDUCE => {
                let result = match (stack.pop()?, stack.pop()?) {
                    (Item::DtypeArgs, Item::DtypeFn) => Item::Dtype,
                    (Item::ScalarArgs(raw), Item::ScalarFn) => {
                        Item::Float(f64::from_le_bytes(raw.try_into().ok()?))
                    }
                    _ => return None,
                };
                stack.push(result);
            }
            op::BUILD => {
                let (Item::DtypeState("<" | "|"), Some(Item::Dtype)) = (stack.pop()?, stack.last()) else {
                    return None;
                };
            }
            op::MEMOIZE => memo.push(*stack.last()?),
            op::BINPUT | op::LONG_BINPUT => {
                let i = memo_index(bytes, &mut pos, opcode == op::BINPUT)?;
                memo_put(&mut memo, i, *stack.last()?)?;
            }
            op::BINGET | op::LONG_BINGET => {
                let i = memo_index(bytes, &mut pos, opcode == op::BINGET)?;
                stack.push(*memo.get(i)?);
            }
            op::SETITEMS | op::SETITEM => {
                let start = if opcode == op::SETITEMS {
                    let mark = stack.iter().rposition(|i| matches!(i, Item::Mark))?;
                    stack.remove(mark);
                    mark
                } else {
                    stack.len().checked_sub(2)?
                };
                if start == 0
                    || !matches!(stack[start - 1], Item::Dict)
                    || !(stack.len() - start).is_multiple_of(2)
                {
                    return None;
                }
                let mut items = stack.drain(start..);
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    let (Item::Str(k), Item::Float(v)) = (k, v) else {
                        return None;
                    };
                    out.push((k, v));
                }
            }
            op::STOP => {
                return (pos == bytes.len() && matches!(stack.as_slice(), [Item::Dict])).then_some(out);
            }
            _ => return None,
        }
    }
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

type Id = usize;

/// An object under construction. Containers refer to other objects by arena index, so that memo
/// references share (and see mutations of) the very same object.
#[derive(Clone, Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    // The large variants are boxed to keep every object (one per opcode, at worst) small.
    Dict(Box<DictObj>),
    Global(Global),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    NumpyDtype(DType),
}

#[derive(Clone, Debug, Default)]
struct DictObj {
    items: Vec<(Id, Id)>,
    /// Position of each key in `items`, so that a repeated key replaces the value as in Python.
    index: FastMap<Key, usize>,
}

/// The hashable identity of a dict key. Python's `True == 1 == 1.0`, so those collapse to `Int`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    None,
    Int(i64),
    FloatBits(u64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Key>),
    /// Objects hashed by identity in Python (globals, storages, tensors, dtypes).
    Identity(Id),
}

struct Vm<'a> {
    input: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, reported in errors.
    op_start: usize,
    heap: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack depths recorded by `MARK`.
    marks: Vec<usize>,
    memo: FastMap<u64, Id>,
    /// Work left for key hashing and copying out, in objects (long strings count per 8 bytes).
    budget: Cell<usize>,
}

impl Vm<'_> {
    fn err(&self, kind: PickleErrorKind, message: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_start,
            kind,
            message: message.into(),
        }
    }

    fn malformed(&self, message: impl Into<String>) -> PickleError {
        self.err(PickleErrorKind::Malformed, message)
    }

    // ---- reading the input -------------------------------------------------------------------

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let input = self.input;
        let end = self.pos.checked_add(n).filter(|&e| e <= input.len());
        match end {
            Some(end) => {
                let s = &input[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(
                PickleErrorKind::Truncated,
                format!(
                    "truncated: opcode needs {n} more bytes at byte {} but the input ends at byte {}",
                    self.pos,
                    input.len()
                ),
            )),
        }
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn read_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn read_u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take_array()?))
    }

    fn read_u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn read_u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A length read from the input, as usize. The bytes themselves are taken by `take`, which
    /// fails before allocating anything if the length runs past the end of the input.
    fn len_from(&self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).map_err(|_| self.err(PickleErrorKind::Truncated, "length overflows"))
    }

    fn read_utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.malformed(format!("string is not valid UTF-8: {e}"))),
        }
    }

    /// A newline-terminated line (the text arguments of `GLOBAL`).
    fn read_line(&mut self) -> Result<String, PickleError> {
        let rest = &self.input[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err(
                PickleErrorKind::Truncated,
                "truncated: GLOBAL argument has no terminating newline",
            ));
        };
        let s = self.read_utf8(nl)?;
        self.pos += 1; // the newline
        Ok(s)
    }

    // ---- the stack ---------------------------------------------------------------------------

    fn alloc(&mut self, obj: Obj) -> Id {
        self.heap.push(obj);
        self.heap.len() - 1
    }

    fn push(&mut self, obj: Obj) {
        let id = self.alloc(obj);
        self.stack.push(id);
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        // A MARK must not be popped through by a plain pop.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&self) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    /// Pops everything above the most recent MARK (and the mark itself).
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(depth) = self.marks.pop() else {
            return Err(self.malformed("no MARK on the stack"));
        };
        if depth > self.stack.len() {
            return Err(self.malformed("MARK points past the stack"));
        }
        Ok(self.stack.split_off(depth))
    }

    fn memo_get(&self, index: u64) -> Result<Id, PickleError> {
        self.memo
            .get(&index)
            .copied()
            .ok_or_else(|| self.malformed(format!("memo index {index} was never stored")))
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    // ---- the interpreter ---------------------------------------------------------------------

    /// Executes opcodes until `STOP` and returns the object left on the stack.
    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            self.op_start = self.pos;
            if self.pos >= self.input.len() {
                return Err(self.err(
                    PickleErrorKind::Truncated,
                    "truncated: the input ends before the STOP opcode",
                ));
            }
            let op = self.read_u8()?;
            match op {
                op::PROTO => {
                    let v = self.read_u8()?;
                    if v > 5 {
                        return Err(self
                            .malformed(format!("pickle protocol {v} is newer than the highest known (5)")));
                    }
                }
                op::FRAME => {
                    // Framing only helps buffered readers; check it fits, then read on as usual.
                    let n = self.read_u64()?;
                    let remaining = (self.input.len() - self.pos) as u64;
                    if n > remaining {
                        return Err(self.err(
                            PickleErrorKind::Truncated,
                            format!("truncated: frame of {n} bytes but only {remaining} remain"),
                        ));
                    }
                }
                op::STOP => return self.pop(),
                op::MARK => self.marks.push(self.stack.len()),

                // Constants.
                op::NONE => self.push(Obj::None),
                op::NEWTRUE => self.push(Obj::Bool(true)),
                op::NEWFALSE => self.push(Obj::Bool(false)),
                op::BININT => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Obj::Int(v.into()));
                }
                op::BININT1 => {
                    let v = self.read_u8()?;
                    self.push(Obj::Int(v.into()));
                }
                op::BININT2 => {
                    let v = self.read_u16()?;
                    self.push(Obj::Int(v.into()));
                }
                op::LONG1 => {
                    let n = self.read_u8()? as usize;
                    let bytes = self.take(n)?.to_vec();
                    let v = self.decode_long(&bytes)?;
                    self.push(Obj::Int(v));
                }
                op::BINFLOAT => {
                    // The one big-endian number in the format.
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Obj::Float(v));
                }
                op::SHORT_BINUNICODE => {
                    let n = self.read_u8()? as usize;
                    let s = self.read_utf8(n)?;
                    self.push(Obj::Str(s));
                }
                op::BINUNICODE => {
                    let n = self.read_u32()? as usize;
                    let s = self.read_utf8(n)?;
                    self.push(Obj::Str(s));
                }
                op::BINUNICODE8 => {
                    let n = self.read_u64()?;
                    let n = self.len_from(n)?;
                    let s = self.read_utf8(n)?;
                    self.push(Obj::Str(s));
                }
                op::SHORT_BINBYTES => {
                    let n = self.read_u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b));
                }
                op::BINBYTES => {
                    let n = self.read_u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b));
                }
                op::BINBYTES8 => {
                    let n = self.read_u64()?;
                    let n = self.len_from(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b));
                }

                // Containers.
                op::EMPTY_TUPLE => self.push(Obj::Tuple(Vec::new())),
                op::EMPTY_LIST => self.push(Obj::List(Vec::new())),
                op::EMPTY_DICT => self.push(Obj::Dict(Box::default())),
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (op - op::TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                op::APPEND => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.extend_list(list, &[v])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend_list(list, &items)?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, &[k, v])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, &items)?;
                }

                // Memo.
                op::BINPUT => {
                    let i = self.read_u8()?;
                    self.memo_put(i.into())?;
                }
                op::LONG_BINPUT => {
                    let i = self.read_u32()?;
                    self.memo_put(i.into())?;
                }
                op::MEMOIZE => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                op::BINGET => {
                    let i = self.read_u8()?;
                    let id = self.memo_get(i.into())?;
                    self.stack.push(id);
                }
                op::LONG_BINGET => {
                    let i = self.read_u32()?;
                    let id = self.memo_get(i.into())?;
                    self.stack.push(id);
                }

                // Globals and calls: interpreted from the whitelist, never imported.
                op::GLOBAL => {
                    let module = self.read_line()?;
                    let name = self.read_line()?;
                    let g = self.resolve_global(&module, &name)?;
                    self.push(Obj::Global(g));
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Obj::Str(module), Obj::Str(name)) = (&self.heap[module], &self.heap[name]) else {
                        return Err(self.malformed("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.resolve_global(module, name)?;
                    self.push(Obj::Global(g));
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let obj = self.reduce(callable, args)?;
                    self.push(obj);
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(Obj::Storage(Box::new(storage)));
                }
                other => {
                    let name = op::name(other).map(|n| format!(" ({n})")).unwrap_or_default();
                    return Err(self.err(
                        PickleErrorKind::UnsupportedOpcode(other),
                        format!(
                            "unsupported pickle opcode 0x{other:02x}{name}; scinterp reads only \
                             the opcodes used by PyTorch state dicts and plain dict pickles"
                        ),
                    ));
                }
            }
        }
    }

    /// `LONG1`: little-endian two's complement of any length; must fit in i64.
    fn decode_long(&self, bytes: &[u8]) -> Result<i64, PickleError> {
        let Some(&last) = bytes.last() else {
            return Ok(0);
        };
        let fill = if last & 0x80 != 0 { 0xff } else { 0x00 };
        let mut buf = [fill; 8];
        let (low, high) = bytes.split_at(bytes.len().min(8));
        buf[..low.len()].copy_from_slice(low);
        let v = i64::from_le_bytes(buf);
        // Bytes beyond the eighth must only repeat the sign, and the sign must survive truncation.
        let sign_ok = high.iter().all(|&b| b == fill) && ((v < 0) == (fill == 0xff));
        if !sign_ok {
            return Err(self.malformed("integer does not fit in 64 bits"));
        }
        Ok(v)
    }

    fn resolve_global(&self, module: &str, name: &str) -> Result<Global, PickleError> {
        let storage = |d| Ok(Global::StorageType(d));
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch", "FloatStorage") => storage(DType::F32),
            ("torch", "HalfStorage") => storage(DType::F16),
            ("torch", "BFloat16Storage") => storage(DType::BF16),
            ("torch", "DoubleStorage") => storage(DType::F64),
            ("torch", "LongStorage") => storage(DType::I64),
            ("torch", "IntStorage") => storage(DType::I32),
            ("torch", "ShortStorage") => storage(DType::I16),
            ("torch", "CharStorage") => storage(DType::I8),
            ("torch", "ByteStorage") => storage(DType::U8),
            ("torch", "BoolStorage") => storage(DType::Bool),
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Ok(Global::NumpyScalar),
            ("numpy", "dtype") => Ok(Global::NumpyDtype),
            _ => {
                let full = format!("{module}.{name}");
                // Tell the user what such a reference usually means.
                let hint = match (module, name) {
                    ("torch._utils", "_rebuild_tensor_v3") | ("torch", "UntypedStorage") => {
                        " (it holds a tensor of a dtype scinterp does not read, such as uint16 or \
                         float8; convert the checkpoint to f32/f16/bf16)"
                    }
                    _ if module.starts_with("torch") || module.starts_with("transformers") => {
                        " (the file probably holds a whole pickled model or optimizer rather than \
                         a state dict; save `model.state_dict()` instead)"
                    }
                    _ => "",
                };
                Err(self.err(
                    PickleErrorKind::RefusedGlobal(full.clone()),
                    format!(
                        "refused global `{full}`: scinterp never executes pickled code and only \
                         understands state-dict and dictionary pickles{hint}"
                    ),
                ))
            }
        }
    }

    fn extend_list(&mut self, list: Id, items: &[Id]) -> Result<(), PickleError> {
        match &mut self.heap[list] {
            Obj::List(v) => {
                v.extend_from_slice(items);
                Ok(())
            }
            _ => Err(self.malformed("APPEND(S) target is not a list")),
        }
    }

    fn set_items(&mut self, dict: Id, items: &[Id]) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of items"));
        }
        // Hash the keys first: that reads the heap, the insertion below mutates it.
        let keys = items
            .chunks_exact(2)
            .map(|pair| self.key_of(pair[0], 0))
            .collect::<Result<Vec<_>, _>>()?;
        let Obj::Dict(d) = &mut self.heap[dict] else {
            return Err(self.malformed("SETITEM(S) target is not a dict"));
        };
        for (key, pair) in keys.into_iter().zip(items.chunks_exact(2)) {
            match d.index.get(&key) {
                Some(&pos) => d.items[pos].1 = pair[1],
                None => {
                    d.index.insert(key, d.items.len());
                    d.items.push((pair[0], pair[1]));
                }
            }
        }
        Ok(())
    }

    fn key_of(&self, id: Id, depth: usize) -> Result<Key, PickleError> {
        if depth > MAX_DEPTH {
            return Err(self.err(PickleErrorKind::LimitExceeded, "dict key nested too deeply"));
        }
        self.spend(id, self.op_start)?;
        Ok(match &self.heap[id] {
            Obj::None => Key::None,
            Obj::Bool(b) => Key::Int(i64::from(*b)),
            Obj::Int(i) => Key::Int(*i),
            Obj::Float(f) => {
                // 1.0 and 1 are the same key in Python.
                if f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64 {
                    Key::Int(*f as i64)
                } else {
                    Key::FloatBits(f.to_bits())
                }
            }
            Obj::Str(s) => Key::Str(s.clone()),
            Obj::Bytes(b) => Key::Bytes(b.clone()),
            Obj::Tuple(items) => Key::Tuple(
                items
                    .iter()
                    .map(|&i| self.key_of(i, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Obj::List(_) | Obj::Dict(_) => return Err(self.malformed("unhashable dict key (a list or dict)")),
            Obj::Global(_) | Obj::Storage(_) | Obj::Tensor(_) | Obj::NumpyDtype(_) => Key::Identity(id),
        })
    }

    fn tuple_items(&self, id: Id, what: &str) -> Result<Vec<Id>, PickleError> {
        match &self.heap[id] {
            Obj::Tuple(items) => Ok(items.clone()),
            other => Err(self.malformed(format!("{what}: expected a tuple, found {}", obj_kind(other)))),
        }
    }

    fn int_at(&self, id: Id, what: &str) -> Result<i64, PickleError> {
        match &self.heap[id] {
            Obj::Int(i) => Ok(*i),
            other => Err(self.malformed(format!("{what}: expected an int, found {}", obj_kind(other)))),
        }
    }

    fn usize_at(&self, id: Id, what: &str) -> Result<usize, PickleError> {
        let v = self.int_at(id, what)?;
        usize::try_from(v).map_err(|_| self.malformed(format!("{what}: {v} is negative")))
    }

    fn usizes_at(&self, id: Id, what: &str) -> Result<Vec<usize>, PickleError> {
        self.tuple_items(id, what)?
            .into_iter()
            .map(|i| self.usize_at(i, what))
            .collect()
    }

    fn str_at(&self, id: Id, what: &str) -> Result<String, PickleError> {
        match &self.heap[id] {
            Obj::Str(s) => Ok(s.clone()),
            other => Err(self.malformed(format!("{what}: expected a str, found {}", obj_kind(other)))),
        }
    }

    /// `REDUCE`: applies a whitelisted global to its argument tuple, by our own interpretation.
    fn reduce(&self, callable: Id, args: Id) -> Result<Obj, PickleError> {
        let Obj::Global(g) = self.heap[callable] else {
            return Err(self.malformed(format!(
                "REDUCE on a {}, which is not callable",
                obj_kind(&self.heap[callable])
            )));
        };
        let args = self.tuple_items(args, &format!("arguments of {}", g.python_name()))?;
        match g {
            Global::OrderedDict => {
                // torch writes `OrderedDict()` and adds the items with SETITEMS afterwards.
                if !args.is_empty() {
                    return Err(self.malformed("OrderedDict called with arguments"));
                }
                Ok(Obj::Dict(Box::default()))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return Err(self.malformed(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    )));
                }
                let Obj::Storage(storage) = &self.heap[args[0]] else {
                    return Err(self.malformed(format!(
                        "_rebuild_tensor_v2: expected a storage, found {}",
                        obj_kind(&self.heap[args[0]])
                    )));
                };
                let offset = self.usize_at(args[1], "tensor storage offset")?;
                let shape = self.usizes_at(args[2], "tensor size")?;
                let stride = self.usizes_at(args[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.malformed(format!(
                        "tensor has {} sizes but {} strides",
                        shape.len(),
                        stride.len()
                    )));
                }
                let requires_grad = matches!(self.heap[args[4]], Obj::Bool(true));
                // backward_hooks and metadata carry nothing a reader needs.
                Ok(Obj::Tensor(Box::new(TensorRef {
                    storage: (**storage).clone(),
                    offset,
                    shape,
                    stride,
                    requires_grad,
                })))
            }
            Global::RebuildParameter => {
                // (data, requires_grad, backward_hooks): an nn.Parameter is just its tensor here.
                match args.first().map(|&a| &self.heap[a]) {
                    Some(Obj::Tensor(t)) if args.len() == 3 => Ok(Obj::Tensor(t.clone())),
                    _ => Err(self.malformed("_rebuild_parameter expects (tensor, bool, hooks)")),
                }
            }
            Global::StorageType(_) => Err(self.malformed(format!(
                "{} may only appear in a persistent id, not be called",
                g.python_name()
            ))),
            Global::NumpyDtype => {
                // numpy.dtype('f8', False, True); the byte order arrives later with BUILD.
                if args.len() != 3 {
                    return Err(self.malformed("numpy.dtype expects 3 arguments"));
                }
                let spec = self.str_at(args[0], "numpy dtype")?;
                Ok(Obj::NumpyDtype(self.numpy_dtype(&spec)?))
            }
            Global::NumpyScalar => {
                // scalar(dtype, raw little-endian bytes) -> the number.
                let (Some(Obj::NumpyDtype(d)), Some(Obj::Bytes(raw)), 2) = (
                    args.first().map(|&a| &self.heap[a]),
                    args.get(1).map(|&a| &self.heap[a]),
                    args.len(),
                ) else {
                    return Err(self.malformed("numpy scalar expects (dtype, bytes)"));
                };
                self.numpy_scalar(*d, raw)
            }
        }
    }

    /// Parses a numpy dtype string such as `f8`, `<i2` or `|u1`.
    fn numpy_dtype(&self, spec: &str) -> Result<DType, PickleError> {
        let body = match spec.as_bytes().first() {
            Some(b'<' | b'|') => &spec[1..],
            Some(b'>') => {
                return Err(self.malformed(format!(
                    "numpy dtype `{spec}` is big-endian; only little-endian data is supported"
                )))
            }
            _ => spec,
        };
        Ok(match body {
            "f8" => DType::F64,
            "f4" => DType::F32,
            "f2" => DType::F16,
            "i8" => DType::I64,
            "i4" => DType::I32,
            "i2" => DType::I16,
            "i1" => DType::I8,
            "u1" => DType::U8,
            "b1" => DType::Bool,
            _ => {
                return Err(self.malformed(format!(
                    "numpy dtype `{spec}` is not supported (expected f8, f4, f2, i8, i4, i2, i1, \
                     u1 or b1)"
                )))
            }
        })
    }

    fn numpy_scalar(&self, dtype: DType, raw: &[u8]) -> Result<Obj, PickleError> {
        if raw.len() != dtype.size_in_bytes() {
            return Err(self.malformed(format!(
                "numpy {dtype} scalar has {} bytes, expected {}",
                raw.len(),
                dtype.size_in_bytes()
            )));
        }
        let arr = |n: usize| {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(&raw[..n]);
            a
        };
        Ok(match dtype {
            DType::F64 => Obj::Float(f64::from_le_bytes(arr(8))),
            DType::F32 => Obj::Float(f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]).into()),
            DType::F16 => Obj::Float(half::f16::from_le_bytes([raw[0], raw[1]]).to_f64()),
            DType::BF16 => Obj::Float(half::bf16::from_le_bytes([raw[0], raw[1]]).to_f64()),
            DType::I64 => Obj::Int(i64::from_le_bytes(arr(8))),
            DType::I32 => Obj::Int(i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]).into()),
            DType::I16 => Obj::Int(i16::from_le_bytes([raw[0], raw[1]]).into()),
            DType::I8 => Obj::Int(i8::from_le_bytes([raw[0]]).into()),
            DType::U8 => Obj::Int(raw[0].into()),
            DType::Bool => Obj::Bool(raw[0] != 0),
        })
    }

    /// `BUILD`: sets an object's state. Only the two cases pickles of ours contain are accepted.
    fn build(&self, target: Id, state: Id) -> Result<(), PickleError> {
        match &self.heap[target] {
            // OrderedDict state is `{'_metadata': ...}` (module versions); nothing we need.
            Obj::Dict(_) => Ok(()),
            Obj::NumpyDtype(d) => {
                // State (version, byteorder, subarray, names, fields, elsize, alignment, flags):
                // only the byte order matters for the scalars we decode.
                let items = self.tuple_items(state, "numpy dtype state")?;
                let order = match items.get(1).map(|&i| &self.heap[i]) {
                    Some(Obj::Str(s)) => s.as_str(),
                    _ => return Err(self.malformed("numpy dtype state has no byte order")),
                };
                match order {
                    "<" | "|" => Ok(()),
                    ">" => Err(self.malformed(format!(
                        "numpy {d} dtype is big-endian; only little-endian data is supported"
                    ))),
                    other => {
                        Err(self.malformed(format!("numpy dtype byte order `{other}` is not supported")))
                    }
                }
            }
            other => Err(self.malformed(format!("BUILD on a {} is not supported", obj_kind(other)))),
        }
    }

    /// `BINPERSID`: torch's persistent id `('storage', StorageType, key, location, numel)`.
    fn persistent_load(&self, pid: Id) -> Result<StorageRef, PickleError> {
        let items = self.tuple_items(pid, "persistent id")?;
        if items.len() != 5 {
            return Err(self.malformed(format!(
                "persistent id has {} fields, expected 5 ('storage', type, key, location, numel)",
                items.len()
            )));
        }
        let tag = self.str_at(items[0], "persistent id tag")?;
        if tag != "storage" {
            return Err(self.malformed(format!("persistent id of kind `{tag}`, expected `storage`")));
        }
        let Obj::Global(Global::StorageType(dtype)) = self.heap[items[1]] else {
            return Err(self.malformed(format!(
                "persistent id storage type is a {}, expected e.g. torch.FloatStorage",
                obj_kind(&self.heap[items[1]])
            )));
        };
        Ok(StorageRef {
            dtype,
            key: self.str_at(items[2], "storage key")?,
            location: self.str_at(items[3], "storage location")?,
            numel: self.usize_at(items[4], "storage size")?,
        })
    }

    // ---- copying out -------------------------------------------------------------------------

    /// Charges the work budget for visiting one object.
    fn spend(&self, id: Id, offset: usize) -> Result<(), PickleError> {
        let cost = 1 + match &self.heap[id] {
            Obj::Str(s) => s.len() / 8,
            Obj::Bytes(b) => b.len() / 8,
            _ => 0,
        };
        match self.budget.get().checked_sub(cost) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(PickleError {
                offset,
                kind: PickleErrorKind::LimitExceeded,
                message: "the object graph expands to far more than the input's size (shared \
                          references used over and over); refusing to expand it"
                    .into(),
            }),
        }
    }

    fn export(&self, id: Id, depth: usize) -> Result<Value, PickleError> {
        if depth > MAX_DEPTH {
            return Err(PickleError {
                offset: self.input.len(),
                kind: PickleErrorKind::LimitExceeded,
                message: format!(
                    "objects nested more than {MAX_DEPTH} deep (or a container that contains itself)"
                ),
            });
        }
        self.spend(id, self.input.len())?;
        let obj = &self.heap[id];
        let list = |items: &[Id]| {
            items
                .iter()
                .map(|&i| self.export(i, depth + 1))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match obj {
            Obj::None => Value::None,
            Obj::Bool(b) => Value::Bool(*b),
            Obj::Int(i) => Value::Int(*i),
            Obj::Float(f) => Value::Float(*f),
            Obj::Str(s) => Value::String(s.clone()),
            Obj::Bytes(b) => Value::Bytes(b.clone()),
            Obj::Tuple(items) => Value::Tuple(list(items)?),
            Obj::List(items) => Value::List(list(items)?),
            Obj::Dict(d) => {
                let mut out = Vec::with_capacity(d.items.len());
                for &(k, v) in &d.items {
                    let k = self.export(k, depth + 1)?;
                    let v = self.export(v, depth + 1)?;
                    out.push((k, v));
                }
                Value::Dict(out)
            }
            Obj::Global(g) => Value::Global(*g),
            Obj::Storage(s) => Value::Storage((**s).clone()),
            Obj::Tensor(t) => Value::Tensor((**t).clone()),
            Obj::NumpyDtype(d) => Value::NumpyDtype(*d),
        })
    }
}

fn obj_kind(obj: &Obj) -> &'static str {
    match obj {
        Obj::None => "None",
        Obj::Bool(_) => "bool",
        Obj::Int(_) => "int",
        Obj::Float(_) => "float",
        Obj::Str(_) => "str",
        Obj::Bytes(_) => "bytes",
        Obj::Tuple(_) => "tuple",
        Obj::List(_) => "list",
        Obj::Dict(_) => "dict",
        Obj::Global(_) => "global",
        Obj::Storage(_) => "storage",
        Obj::Tensor(_) => "tensor",
        Obj::NumpyDtype(_) => "numpy dtype",
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

/// Opcode bytes (see CPython's `Lib/pickletools.py` for the format's documentation).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;

    /// Names of the standard opcodes this reader does not implement, for error messages.
    pub fn name(op: u8) -> Option<&'static str> {
        Some(match op {
            b'0' => "POP",
            b'1' => "POP_MARK",
            b'2' => "DUP",
            b'F' => "FLOAT",
            b'I' => "INT",
            b'L' => "LONG",
            b'P' => "PERSID",
            b'S' => "STRING",
            b'T' => "BINSTRING",
            b'U' => "SHORT_BINSTRING",
            b'V' => "UNICODE",
            b'd' => "DICT",
            b'g' => "GET",
            b'i' => "INST",
            b'l' => "LIST",
            b'o' => "OBJ",
            b'p' => "PUT",
            0x81 => "NEWOBJ",
            0x82 => "EXT1",
            0x83 => "EXT2",
            0x84 => "EXT4",
            0x8b => "LONG4",
            0x8f => "EMPTY_SET",
            0x90 => "ADDITEMS",
            0x91 => "FROZENSET",
            0x92 => "NEWOBJ_EX",
            0x96 => "BYTEARRAY8",
            0x97 => "NEXT_BUFFER",
            0x98 => "READONLY_BUFFER",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assembles opcode streams by hand.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn proto(v: u8) -> Self {
            P(vec![op::PROTO, v])
        }
        fn op(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn uni(self, s: &str) -> Self {
            let n = (s.len() as u32).to_le_bytes();
            self.op(op::BINUNICODE).raw(&n).raw(s.as_bytes())
        }
        fn short_uni(self, s: &str) -> Self {
            self.op(op::SHORT_BINUNICODE)
                .raw(&[s.len() as u8])
                .raw(s.as_bytes())
        }
        fn int1(self, v: u8) -> Self {
            self.op(op::BININT1).raw(&[v])
        }
        fn put(self, i: u8) -> Self {
            self.op(op::BINPUT).raw(&[i])
        }
        fn get(self, i: u8) -> Self {
            self.op(op::BINGET).raw(&[i])
        }
        fn global(self, module: &str, name: &str) -> Self {
            self.op(op::GLOBAL)
                .raw(module.as_bytes())
                .raw(b"\n")
                .raw(name.as_bytes())
                .raw(b"\n")
        }
        fn stop(self) -> Vec<u8> {
            self.op(op::STOP).0
        }
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    fn err_of(bytes: &[u8]) -> PickleError {
        match load(bytes) {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e,
        }
    }

    /// A torch-like state dict: OrderedDict, two tensors over one storage, a Parameter, and the
    /// `_metadata` BUILD that module.state_dict() adds.
    fn torch_like() -> Vec<u8> {
        let tensor = |p: P, storage: &dyn Fn(P) -> P, offset: u8, shape: &[u8], stride: &[u8]| {
            // The caller has pushed the callable (memo 3).
            let mut p = storage(p.op(op::MARK)).int1(offset).op(op::MARK);
            for &d in shape {
                p = p.int1(d);
            }
            p = p.op(op::TUPLE).op(op::MARK);
            for &d in stride {
                p = p.int1(d);
            }
            p.op(op::TUPLE)
                .op(op::NEWFALSE)
                .get(0)
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE)
                .op(op::TUPLE)
                .op(op::REDUCE)
        };
        let first_storage = |p: P| {
            p.op(op::MARK)
                .uni("storage")
                .put(4)
                .global("torch", "FloatStorage")
                .put(5)
                .uni("0")
                .put(6)
                .uni("cpu")
                .put(7)
                .int1(6)
                .op(op::TUPLE)
                .put(8)
                .op(op::BINPERSID)
        };
        let same_storage = |p: P| p.get(8).op(op::BINPERSID);
        let mut p = P::proto(2)
            .global("collections", "OrderedDict")
            .put(0)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .put(1)
            .op(op::MARK)
            .uni("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .put(3);
        p = tensor(p, &first_storage, 0, &[2, 3], &[3, 1]);
        p = p.uni("wt").get(3);
        p = tensor(p, &same_storage, 1, &[3, 2], &[1, 3]);
        p = p
            .uni("p")
            .global("torch._utils", "_rebuild_parameter")
            .op(op::MARK)
            .get(3);
        p = tensor(p, &same_storage, 0, &[6], &[1]);
        p = p
            .op(op::NEWTRUE)
            .get(0)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::TUPLE)
            .op(op::REDUCE)
            .op(op::SETITEMS);
        // BUILD state {'_metadata': OrderedDict()} on the OrderedDict: ignored.
        p.op(op::EMPTY_DICT)
            .uni("_metadata")
            .get(0)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::SETITEM)
            .op(op::BUILD)
            .stop()
    }

    #[test]
    fn plain_dict_proto2() {
        let bytes = P::proto(2)
            .op(op::EMPTY_DICT)
            .put(0)
            .op(op::MARK)
            .uni("a")
            .int1(1)
            .uni("b")
            .op(op::BINFLOAT)
            .raw(&1.5f64.to_be_bytes())
            .uni("c")
            .op(op::NONE)
            .uni("d")
            .op(op::NEWTRUE)
            .uni("e")
            .op(op::BININT)
            .raw(&(-7i32).to_le_bytes())
            .uni("f")
            .op(op::BININT2)
            .raw(&40000u16.to_le_bytes())
            .op(op::SETITEMS)
            .stop();
        let d = load_dict(&bytes).unwrap();
        assert_eq!(
            d,
            vec![
                (s("a"), Value::Int(1)),
                (s("b"), Value::Float(1.5)),
                (s("c"), Value::None),
                (s("d"), Value::Bool(true)),
                (s("e"), Value::Int(-7)),
                (s("f"), Value::Int(40000)),
            ]
        );
    }

    #[test]
    fn torch_state_dict_tensors_parameters_and_metadata() {
        let d = load_dict(&torch_like()).unwrap();
        let names: Vec<_> = d.iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(names, ["w", "wt", "p"]);
        let storage = StorageRef {
            dtype: DType::F32,
            key: "0".into(),
            location: "cpu".into(),
            numel: 6,
        };
        let t = |i: usize| d[i].1.as_tensor().unwrap().clone();
        assert_eq!(
            t(0),
            TensorRef {
                storage: storage.clone(),
                offset: 0,
                shape: vec![2, 3],
                stride: vec![3, 1],
                requires_grad: false,
            }
        );
        assert_eq!(t(1).offset, 1);
        assert_eq!(t(1).shape, [3, 2]);
        assert_eq!(t(1).stride, [1, 3]);
        assert_eq!(t(1).storage, storage);
        // The Parameter unwraps to its tensor.
        assert_eq!(t(2).shape, [6]);
        assert_eq!(t(2).dtype(), DType::F32);
    }

    #[test]
    fn memo_holds_built_objects() {
        // dict: a -> scalar(f8 dtype built with '<', 2.25), b -> BINGET of that scalar,
        // c -> a new scalar whose dtype is a BINGET of the dtype mutated by BUILD.
        let dtype_state = |p: P| {
            p.op(op::MARK)
                .int1(3)
                .short_uni("<")
                .op(op::NONE)
                .op(op::NONE)
                .op(op::NONE)
                .op(op::BININT)
                .raw(&(-1i32).to_le_bytes())
                .op(op::BININT)
                .raw(&(-1i32).to_le_bytes())
                .int1(0)
                .op(op::TUPLE)
        };
        let p = P::proto(4)
            .op(op::EMPTY_DICT)
            .op(op::MEMOIZE) // 0
            .op(op::MARK)
            .short_uni("a")
            .op(op::MEMOIZE) // 1
            .short_uni("numpy.core.multiarray")
            .op(op::MEMOIZE) // 2
            .short_uni("scalar")
            .op(op::MEMOIZE) // 3
            .op(op::STACK_GLOBAL)
            .op(op::MEMOIZE) // 4
            .short_uni("numpy")
            .op(op::MEMOIZE) // 5
            .short_uni("dtype")
            .op(op::MEMOIZE) // 6
            .op(op::STACK_GLOBAL)
            .op(op::MEMOIZE) // 7
            .short_uni("f8")
            .op(op::MEMOIZE) // 8
            .op(op::NEWFALSE)
            .op(op::NEWTRUE)
            .op(op::TUPLE3)
            .op(op::MEMOIZE) // 9
            .op(op::REDUCE)
            .op(op::MEMOIZE); // 10: the dtype, before BUILD
        let p = dtype_state(p)
            .op(op::MEMOIZE) // 11
            .op(op::BUILD)
            .op(op::SHORT_BINBYTES)
            .raw(&[8])
            .raw(&2.25f64.to_le_bytes())
            .op(op::MEMOIZE) // 12
            .op(op::TUPLE2)
            .op(op::MEMOIZE) // 13
            .op(op::REDUCE)
            .op(op::MEMOIZE) // 14: the scalar
            .short_uni("b")
            .op(op::MEMOIZE)
            .get(14)
            .short_uni("c")
            .op(op::MEMOIZE)
            .get(4)
            .get(10)
            .op(op::SHORT_BINBYTES)
            .raw(&[8])
            .raw(&(-0.5f64).to_le_bytes())
            .op(op::TUPLE2)
            .op(op::REDUCE)
            .short_uni("key_again")
            .get(1) // the string "a" as a value
            .op(op::SETITEMS);
        let d = load_dict(&p.stop()).unwrap();
        assert_eq!(
            d,
            vec![
                (s("a"), Value::Float(2.25)),
                (s("b"), Value::Float(2.25)),
                (s("c"), Value::Float(-0.5)),
                (s("key_again"), s("a")),
            ]
        );
    }

    #[test]
    fn frames_lists_tuples_bytes() {
        let body = P::default()
            .op(op::EMPTY_LIST)
            .put(0)
            .int1(1)
            .op(op::APPEND)
            .op(op::MARK)
            .int1(2)
            .op(op::EMPTY_TUPLE)
            .int1(3)
            .op(op::TUPLE1)
            .int1(4)
            .int1(5)
            .op(op::TUPLE2)
            .int1(6)
            .int1(7)
            .int1(8)
            .op(op::TUPLE3)
            .op(op::MARK)
            .int1(9)
            .op(op::TUPLE)
            .op(op::SHORT_BINBYTES)
            .raw(&[2, 0xde, 0xad])
            .op(op::BINBYTES)
            .raw(&1u32.to_le_bytes())
            .raw(&[7])
            .op(op::BINUNICODE8)
            .raw(&3u64.to_le_bytes())
            .raw(b"abc")
            .op(op::APPENDS)
            .stop();
        let mut bytes = vec![op::PROTO, 4, op::FRAME];
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        let v = load(&bytes).unwrap();
        assert_eq!(
            v,
            Value::List(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Tuple(vec![]),
                Value::Tuple(vec![Value::Int(3)]),
                Value::Tuple(vec![Value::Int(4), Value::Int(5)]),
                Value::Tuple(vec![Value::Int(6), Value::Int(7), Value::Int(8)]),
                Value::Tuple(vec![Value::Int(9)]),
                Value::Bytes(vec![0xde, 0xad]),
                Value::Bytes(vec![7]),
                s("abc"),
            ])
        );
    }

    #[test]
    fn long1_integers() {
        let long = |b: &[u8]| {
            let bytes = P::proto(2).op(op::LONG1).raw(&[b.len() as u8]).raw(b).stop();
            load(&bytes)
        };
        assert_eq!(long(&[]).unwrap(), Value::Int(0));
        assert_eq!(long(&[0xff]).unwrap(), Value::Int(-1));
        assert_eq!(long(&[0x00, 0x80, 0x00]).unwrap(), Value::Int(32768));
        assert_eq!(long(&[0x00, 0x80]).unwrap(), Value::Int(-32768));
        let big = (1i64 << 40) + 5;
        assert_eq!(long(&big.to_le_bytes()[..6]).unwrap(), Value::Int(big));
        assert_eq!(long(&i64::MIN.to_le_bytes()).unwrap(), Value::Int(i64::MIN));
        // Sign extension beyond 8 bytes is fine; real 65-bit values are not.
        assert_eq!(long(&[0xff; 9]).unwrap(), Value::Int(-1));
        let mut too_big = [0u8; 9];
        too_big[8] = 1;
        assert_eq!(long(&too_big).unwrap_err().kind, PickleErrorKind::Malformed);
        // 2**63 needs 9 bytes (00 .. 80 00) and does not fit.
        let mut two63 = [0u8; 9];
        two63[7] = 0x80;
        assert!(long(&two63).is_err());
    }

    #[test]
    fn repeated_key_keeps_first_position_and_last_value() {
        let bytes = P::proto(2)
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .uni("x")
            .int1(1)
            .uni("y")
            .int1(2)
            .uni("x")
            .int1(3)
            .int1(1)
            .int1(4)
            .op(op::NEWTRUE) // True == 1 in Python
            .int1(5)
            .op(op::SETITEMS)
            .stop();
        assert_eq!(
            load_dict(&bytes).unwrap(),
            vec![
                (s("x"), Value::Int(3)),
                (s("y"), Value::Int(2)),
                (Value::Int(1), Value::Int(5)),
            ]
        );
    }

    #[test]
    fn refuses_unlisted_globals_without_running_them() {
        // pickle.dumps of os.system('echo pwned') via REDUCE.
        let bytes = P::proto(2)
            .global("os", "system")
            .put(0)
            .uni("echo pwned")
            .op(op::TUPLE1)
            .op(op::REDUCE)
            .stop();
        let e = err_of(&bytes);
        assert_eq!(e.kind, PickleErrorKind::RefusedGlobal("os.system".into()));
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("`os.system`"), "{e}");
        assert!(e.message.contains("never executes"), "{e}");

        // The same through STACK_GLOBAL.
        let bytes = P::proto(4)
            .short_uni("builtins")
            .short_uni("eval")
            .op(op::STACK_GLOBAL)
            .stop();
        let e = err_of(&bytes);
        assert_eq!(e.kind, PickleErrorKind::RefusedGlobal("builtins.eval".into()));

        // A whole pickled model gets a hint.
        let bytes = P::proto(2)
            .global("transformers.models.bert", "BertForMaskedLM")
            .stop();
        assert!(err_of(&bytes).message.contains("state_dict()"));

        // STACK_GLOBAL with non-strings.
        let bytes = P::proto(4).int1(1).int1(2).op(op::STACK_GLOBAL).stop();
        assert_eq!(err_of(&bytes).kind, PickleErrorKind::Malformed);
    }

    #[test]
    fn unsupported_opcodes_are_named() {
        let bytes = P::proto(2)
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(0x81)
            .stop();
        let e = err_of(&bytes);
        assert_eq!(e.kind, PickleErrorKind::UnsupportedOpcode(0x81));
        assert_eq!(e.offset, 28);
        assert!(e.message.contains("0x81 (NEWOBJ)"), "{e}");
        let e = err_of(&[0x80, 2, 0xff]);
        assert_eq!(e.kind, PickleErrorKind::UnsupportedOpcode(0xff));
        assert_eq!(e.offset, 2);
        // Protocol 6 does not exist (yet).
        assert_eq!(err_of(&[0x80, 6, b'N', b'.']).kind, PickleErrorKind::Malformed);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = torch_like();
        assert!(load(&full).is_ok());
        for n in 0..full.len() {
            let e = err_of(&full[..n]);
            assert_eq!(e.kind, PickleErrorKind::Truncated, "prefix {n}: {e}");
            assert!(e.offset <= n, "prefix {n}: offset {}", e.offset);
        }
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        let cases: [&[u8]; 6] = [
            &[0x80, 4, op::BINUNICODE, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[
                0x80,
                4,
                op::BINUNICODE8,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
            ],
            &[0x80, 4, op::BINBYTES, 0xff, 0xff, 0xff, 0x7f],
            &[0x80, 4, op::BINBYTES8, 0, 0, 0, 0, 0, 0, 0, 0x80],
            &[0x80, 4, op::FRAME, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x80, 4, op::SHORT_BINUNICODE, 200, b'a', b'b'],
        ];
        for bytes in cases {
            let e = err_of(bytes);
            assert_eq!(e.kind, PickleErrorKind::Truncated, "{e}");
            assert_eq!(e.offset, 2);
        }
        // GLOBAL without its newline.
        assert_eq!(err_of(b"\x80\x02cos\nsys").kind, PickleErrorKind::Truncated);
    }

    #[test]
    fn malformed_programs_are_errors() {
        let malformed: [&[u8]; 12] = [
            b".",                                  // STOP on an empty stack
            b"\x80\x02h\x05.",                     // memo index never stored
            b"\x80\x02(R.",                        // REDUCE through a MARK
            b"\x80\x02t.",                         // TUPLE without MARK
            b"\x80\x02}(K\x01u.",                  // SETITEMS with an odd count
            b"\x80\x02K\x01K\x02a.",               // APPEND to an int
            b"\x80\x02K\x01(K\x02u.",              // SETITEMS on an int
            b"\x80\x02}]K\x01s.",                  // unhashable key
            b"\x80\x02K\x01)R.",                   // calling an int
            b"\x80\x02K\x01}b.",                   // BUILD on an int
            b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", // invalid UTF-8
            b"\x80\x02K\x01Q.",                    // persistent id that is not a tuple
        ];
        for bytes in malformed {
            let e = err_of(bytes);
            assert_eq!(e.kind, PickleErrorKind::Malformed, "{bytes:?}: {e}");
        }
        // _rebuild_tensor_v2 calls: `head` pushes the callable, the argument MARK and a storage.
        let call = |head: P, offset: &[u8], size: &[u8], stride: &[u8]| {
            let mut p = head.raw(offset).op(op::MARK);
            for &d in size {
                p = p.int1(d);
            }
            p = p.op(op::TUPLE).op(op::MARK);
            for &d in stride {
                p = p.int1(d);
            }
            p.op(op::TUPLE)
                .op(op::NEWFALSE)
                .op(op::NONE)
                .op(op::TUPLE)
                .op(op::REDUCE)
                .stop()
        };
        let callable = || {
            P::proto(2)
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(op::MARK)
        };
        let with_storage = || {
            callable()
                .op(op::MARK)
                .uni("storage")
                .global("torch", "HalfStorage")
                .uni("0")
                .uni("cpu")
                .int1(4)
                .op(op::TUPLE)
                .op(op::BINPERSID)
        };
        let zero = [op::BININT1, 0];
        let v = load(&call(with_storage(), &zero, &[2, 2], &[2, 1])).unwrap();
        assert_eq!(v.as_tensor().unwrap().dtype(), DType::F16);
        assert_eq!(v.as_tensor().unwrap().storage.numel, 4);
        // An int where the storage should be.
        let e = err_of(&call(callable().int1(1), &zero, &[2], &[1]));
        assert!(e.message.contains("expected a storage"), "{e}");
        let e = err_of(&call(with_storage(), &zero, &[2, 2], &[1]));
        assert!(e.message.contains("2 sizes but 1 strides"), "{e}");
        let mut minus_two = vec![op::BININT];
        minus_two.extend((-2i32).to_le_bytes());
        let e = err_of(&call(with_storage(), &minus_two, &[2], &[1]));
        assert!(e.message.contains("negative"), "{e}");
        // Persistent ids of another kind.
        let pid = P::proto(2)
            .op(op::MARK)
            .uni("module")
            .global("torch", "FloatStorage")
            .uni("0")
            .uni("cpu")
            .int1(1)
            .op(op::TUPLE)
            .op(op::BINPERSID)
            .stop();
        assert!(err_of(&pid).message.contains("`module`"));
    }

    #[test]
    fn numpy_dtype_checks() {
        let scalar = |dtype: &str, order: &str, raw: &[u8]| {
            P::proto(4)
                .short_uni("numpy._core.multiarray")
                .short_uni("scalar")
                .op(op::STACK_GLOBAL)
                .short_uni("numpy")
                .short_uni("dtype")
                .op(op::STACK_GLOBAL)
                .short_uni(dtype)
                .op(op::NEWFALSE)
                .op(op::NEWTRUE)
                .op(op::TUPLE3)
                .op(op::REDUCE)
                .op(op::MARK)
                .int1(3)
                .short_uni(order)
                .op(op::NONE)
                .op(op::NONE)
                .op(op::NONE)
                .int1(0)
                .int1(0)
                .int1(0)
                .op(op::TUPLE)
                .op(op::BUILD)
                .op(op::SHORT_BINBYTES)
                .raw(&[raw.len() as u8])
                .raw(raw)
                .op(op::TUPLE2)
                .op(op::REDUCE)
                .stop()
        };
        let ok = |d: &str, o: &str, raw: &[u8]| load(&scalar(d, o, raw)).unwrap();
        assert_eq!(ok("f8", "<", &0.1f64.to_le_bytes()), Value::Float(0.1));
        assert_eq!(ok("f4", "<", &0.1f32.to_le_bytes()), Value::Float(0.1f32 as f64));
        assert_eq!(ok("i2", "<", &(-3i16).to_le_bytes()), Value::Int(-3));
        assert_eq!(ok("i4", "<", &(-70000i32).to_le_bytes()), Value::Int(-70000));
        assert_eq!(ok("i8", "<", &(-1i64 << 40).to_le_bytes()), Value::Int(-1 << 40));
        assert_eq!(ok("u1", "|", &[200]), Value::Int(200));
        assert_eq!(ok("i1", "|", &[0xff]), Value::Int(-1));
        assert_eq!(ok("b1", "|", &[1]), Value::Bool(true));
        let e = err_of(&scalar("f8", ">", &0.1f64.to_be_bytes()));
        assert!(e.message.contains("big-endian"), "{e}");
        let e = err_of(&scalar("<U3", "<", b"abc"));
        assert!(e.message.contains("not supported"), "{e}");
        let e = err_of(&scalar("f8", "<", &[0; 4]));
        assert!(e.message.contains("4 bytes, expected 8"), "{e}");
        let e = err_of(&scalar(">f8", "<", &[0; 8]));
        assert!(e.message.contains("big-endian"), "{e}");
    }

    #[test]
    fn exponential_sharing_is_refused() {
        // l0 = []; l_{k+1} = [l_k, l_k]: 40 doublings in a few hundred bytes.
        let mut p = P::proto(2).op(op::EMPTY_LIST).put(0);
        for k in 1..=40u8 {
            p = p
                .op(op::EMPTY_LIST)
                .op(op::MARK)
                .get(k - 1)
                .get(k - 1)
                .op(op::APPENDS)
                .put(k);
        }
        let e = err_of(&p.stop());
        assert_eq!(e.kind, PickleErrorKind::LimitExceeded, "{e}");

        // A long string used as a dict key over and over.
        let long = "k".repeat(4000);
        let mut p = P::proto(2).uni(&long).put(0).op(op::EMPTY_DICT);
        for _ in 0..2000 {
            p = p.get(0).int1(1).op(op::SETITEM);
        }
        // The string itself is left below the dict on the stack; STOP returns the dict.
        let e = err_of(&p.stop());
        assert_eq!(e.kind, PickleErrorKind::LimitExceeded, "{e}");
    }

    #[test]
    fn self_reference_and_deep_nesting_are_refused() {
        // l = []; l.append(l)
        let e = err_of(b"\x80\x02]q\x00h\x00a.");
        assert_eq!(e.kind, PickleErrorKind::LimitExceeded, "{e}");
        // 100k nested tuples: no stack overflow.
        let mut bytes = vec![0x80, 2];
        bytes.extend(std::iter::repeat_n(op::MARK, 100_000));
        bytes.extend(std::iter::repeat_n(op::TUPLE, 100_000));
        bytes.push(op::STOP);
        assert_eq!(err_of(&bytes).kind, PickleErrorKind::LimitExceeded);
        // ...nor as a dict key.
        let mut bytes = vec![0x80, 2, op::EMPTY_DICT];
        bytes.extend(std::iter::repeat_n(op::MARK, 100_000));
        bytes.extend(std::iter::repeat_n(op::TUPLE, 100_000));
        bytes.extend([op::NONE, op::SETITEM, op::STOP]);
        assert_eq!(err_of(&bytes).kind, PickleErrorKind::LimitExceeded);
    }

    #[test]
    fn random_mutations_never_panic() {
        let seeds = [
            torch_like(),
            std::fs::read(fixture("numpy_scalars_p4.pkl")).unwrap(),
        ];
        // A small deterministic LCG: no dependency, same cases every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for seed in &seeds {
            for _ in 0..3000 {
                let mut b = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let i = next() % b.len();
                    match next() % 3 {
                        0 => b[i] = next() as u8,
                        1 => b[i] ^= 1 << (next() % 8),
                        _ => b.truncate(i.max(1)),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                let _ = load(&b);
            }
        }
    }

    fn fixture(name: &str) -> String {
        format!("{}/../tests/fixtures/pickle/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn numpy_scalar_fixtures_match_python() {
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("numpy_scalars.expected.json")).unwrap())
                .unwrap();
        let expected = expected.as_array().unwrap();
        for file in ["numpy_scalars_p4.pkl", "numpy_scalars_p5.pkl"] {
            let bytes = std::fs::read(fixture(file)).unwrap();
            let d = load_dict(&bytes).unwrap();
            assert_eq!(d.len(), expected.len(), "{file}");
            for ((k, v), e) in d.iter().zip(expected) {
                let e = e.as_array().unwrap();
                assert_eq!(k.as_str(), e[0].as_str(), "{file}");
                match e[1].as_str().unwrap() {
                    "float" => {
                        let bits = e[2].as_u64().unwrap();
                        assert_eq!(v, &Value::Float(f64::from_bits(bits)), "{file} {k:?}");
                    }
                    _ => assert_eq!(v, &Value::Int(e[2].as_i64().unwrap()), "{file} {k:?}"),
                }
            }
        }
    }

    // ---- the real Geneformer dictionaries (skipped when the shared data is absent) -----------

    fn geneformer(rel: &str) -> Option<Vec<(Value, Value)>> {
        let path = format!(
            "{}/../../shared/data/geneformer/{rel}",
            env!("CARGO_MANIFEST_DIR")
        );
        match std::fs::read(&path) {
            Ok(bytes) => Some(load_dict(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))),
            Err(_) => {
                eprintln!("skipped: {path} not found");
                None
            }
        }
    }

    #[test]
    fn geneformer_v2_token_dictionary() {
        let Some(d) = geneformer("v2/token_dictionary_gc104M.pkl") else {
            return;
        };
        assert_eq!(d.len(), 20_275);
        let special: Vec<_> = d[..4]
            .iter()
            .map(|(k, v)| (k.as_str().unwrap(), v.clone()))
            .collect();
        assert_eq!(
            special,
            [
                ("<pad>", Value::Int(0)),
                ("<mask>", Value::Int(1)),
                ("<cls>", Value::Int(2)),
                ("<eos>", Value::Int(3)),
            ]
        );
        assert!(d
            .iter()
            .all(|(k, v)| k.as_str().is_some() && v.as_i64().is_some()));
    }

    #[test]
    fn geneformer_v2_gene_medians() {
        let Some(d) = geneformer("v2/gene_median_dictionary_gc104M.pkl") else {
            return;
        };
        assert_eq!(d.len(), 42_005);
        for (k, v) in &d {
            assert!(k.as_str().unwrap().starts_with("ENSG"), "{k:?}");
            match v {
                Value::Float(f) => assert!(*f > 0.0, "{k:?} -> {f}"),
                other => panic!("{k:?} -> {other:?}"),
            }
        }
        // First entry, bit-exact (checked against Python's pickle).
        assert_eq!(d[0].0, s("ENSG00000121410"));
        assert_eq!(d[0].1, Value::Float(1.7629378614450941));
    }

    #[test]
    fn geneformer_v1_token_dictionary() {
        let Some(d) = geneformer("v1/token_dictionary_gc30M.pkl") else {
            return;
        };
        assert_eq!(d.len(), 25_426);
        assert_eq!(d[0], (s("<pad>"), Value::Int(0)));
        assert_eq!(d[1], (s("<mask>"), Value::Int(1)));
        assert_eq!(d[2], (s("ENSG00000000003"), Value::Int(2)));
        let mut ids: Vec<i64> = d.iter().map(|(_, v)| v.as_i64().unwrap()).collect();
        ids.sort_unstable();
        assert!(ids.iter().copied().eq(0..25_426));
    }

    #[test]
    fn geneformer_v1_ensembl_mapping_protocol5() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/geneformer/v1/ensembl_mapping_dict_gc30M.pkl"
        );
        if let Ok(bytes) = std::fs::read(path) {
            assert_eq!(&bytes[..2], &[0x80, 5]);
        }
        let Some(d) = geneformer("v1/ensembl_mapping_dict_gc30M.pkl") else {
            return;
        };
        assert_eq!(d.len(), 25_424);
        assert!(d.iter().all(|(k, v)| k.as_str().is_some() && k == v));
    }

    #[test]
    fn geneformer_v2_gene_names() {
        let Some(d) = geneformer("v2/gene_name_id_dict_gc104M.pkl") else {
            return;
        };
        assert_eq!(d.len(), 63_675);
        assert!(d
            .iter()
            .all(|(k, v)| k.as_str().is_some() && v.as_str().is_some_and(|v| v.starts_with("ENSG"))));
    }

    // ---- the flat-dictionary fast path -------------------------------------------------------

    /// `load_flat_dict` as a map (later entries win), for comparison with `load_dict`.
    fn flat_map(bytes: &[u8]) -> Option<HashMap<String, Value>> {
        load_flat_dict(bytes).map(|items| items.into_iter().collect())
    }

    fn vm_map(bytes: &[u8]) -> HashMap<String, Value> {
        load_dict(bytes)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), v))
            .collect()
    }

    #[test]
    fn the_flat_dict_fast_path_equals_the_vm_on_every_real_dictionary() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/geneformer");
        let mut taken = 0;
        for version in ["v1", "v2"] {
            let Ok(entries) = std::fs::read_dir(format!("{dir}/{version}")) else {
                eprintln!("skipped: {dir} not found");
                return;
            };
            for e in entries {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                // The fast path either declines (numpy scalars: the medians, V1 tokens) or agrees.
                if let Some(fast) = flat_map(&bytes) {
                    assert_eq!(fast, vm_map(&bytes), "{}", path.display());
                    taken += 1;
                }
                // Every truncation is declined, never a panic.
                for cut in [0, 1, 2, 11, 12, bytes.len() / 3, bytes.len() - 2, bytes.len() - 1] {
                    assert!(
                        load_flat_dict(&bytes[..cut]).is_none(),
                        "{} cut {cut}",
                        path.display()
                    );
                }
            }
        }
        assert!(
            taken >= 5,
            "the string dictionaries and the V2 tokens take the fast path ({taken})"
        );
    }

    #[test]
    fn the_float_scalar_fast_path_equals_the_vm_on_every_real_dictionary() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/geneformer");
        let mut taken = 0;
        for version in ["v1", "v2"] {
            let Ok(entries) = std::fs::read_dir(format!("{dir}/{version}")) else {
                eprintln!("skipped: {dir} not found");
                return;
            };
            for e in entries {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                // Declined (the string dictionaries, V1's int16 tokens) or equal to the VM, bit for bit,
                // in the same order.
                if let Some(fast) = f64_scalar_dict_entries(&bytes) {
                    let vm = load_dict(&bytes).unwrap();
                    assert_eq!(fast.len(), vm.len(), "{}", path.display());
                    for ((k, v), (vk, vv)) in fast.iter().zip(&vm) {
                        assert_eq!(Some(*k), vk.as_str(), "{}", path.display());
                        assert_eq!(
                            Some(v.to_bits()),
                            vv.as_f64().map(f64::to_bits),
                            "{}",
                            path.display()
                        );
                    }
                    taken += 1;
                }
                for cut in [0, 1, 2, 11, 12, bytes.len() / 3, bytes.len() - 2, bytes.len() - 1] {
                    assert!(
                        f64_scalar_dict_entries(&bytes[..cut]).is_none(),
                        "{} cut {cut}",
                        path.display()
                    );
                }
            }
        }
        assert_eq!(taken, 2, "the V1 and V2 medians take the fast path");
    }

    #[test]
    fn the_float_scalar_fast_path_declines_other_dtypes_and_byte_orders() {
        // One entry {'a': scalar(dtype(spec) with BUILD byte order `order`, raw)}.
        let scalar_dict = |spec: &str, order: &str, raw: &[u8]| {
            P::proto(4)
                .op(op::EMPTY_DICT)
                .short_uni("a")
                .short_uni("numpy.core.multiarray")
                .short_uni("scalar")
                .op(op::STACK_GLOBAL)
                .short_uni("numpy")
                .short_uni("dtype")
                .op(op::STACK_GLOBAL)
                .short_uni(spec)
                .op(op::NEWFALSE)
                .op(op::NEWTRUE)
                .op(op::TUPLE3)
                .op(op::REDUCE)
                .op(op::MARK)
                .int1(3)
                .short_uni(order)
                .op(op::NONE)
                .op(op::NONE)
                .op(op::NONE)
                .op(op::BININT)
                .raw(&(-1i32).to_le_bytes())
                .op(op::BININT)
                .raw(&(-1i32).to_le_bytes())
                .int1(0)
                .op(op::TUPLE)
                .op(op::BUILD)
                .op(op::SHORT_BINBYTES)
                .raw(&[raw.len() as u8])
                .raw(raw)
                .op(op::TUPLE2)
                .op(op::REDUCE)
                .op(op::SETITEM)
                .stop()
        };
        let ok = scalar_dict("f8", "<", &2.25f64.to_le_bytes());
        assert_eq!(f64_scalar_dict_entries(&ok), Some(vec![("a", 2.25)]));
        assert_eq!(load_dict(&ok).unwrap()[0].1.as_f64(), Some(2.25));
        for bad in [
            scalar_dict("f8", ">", &2.25f64.to_be_bytes()),
            scalar_dict(">f8", "<", &2.25f64.to_be_bytes()),
            scalar_dict("f4", "<", &2.25f32.to_le_bytes()),
            scalar_dict("i2", "<", &3i16.to_le_bytes()),
            scalar_dict("f8", "<", &[0; 4]),
        ] {
            assert!(f64_scalar_dict_entries(&bad).is_none());
        }
    }

    #[test]
    fn the_flat_dict_fast_path_declines_what_it_does_not_know() {
        // {'a': 'x', 'b': 1, 'a': <memo 'x'>} with BINPUT / BINGET, protocol 2: later 'a' wins.
        let p: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01X\x01\x00\x00\x00xq\x02X\x01\x00\x00\x00bK\x01h\x01h\x02u.";
        let fast = flat_map(p).unwrap();
        assert_eq!(fast, vm_map(p));
        assert_eq!(fast["a"], s("x"));
        assert_eq!(fast["b"], Value::Int(1));
        // A float value, a nested list, a global, bytes after STOP, a memo hole: all declined.
        for bad in [
            &b"\x80\x02}(X\x01\x00\x00\x00aG?\xf0\x00\x00\x00\x00\x00\x00u."[..],
            b"\x80\x02}(X\x01\x00\x00\x00a]u.",
            b"\x80\x02cos\nsystem\n.",
            b"\x80\x02}.extra",
            b"\x80\x02}q\x05.",
            b"\x80\x02}(h\x00X\x01\x00\x00\x00au.",
        ] {
            assert!(load_flat_dict(bad).is_none(), "{bad:?}");
        }
        // A memo reference repeated beyond the copy budget is declined (the VM then refuses it).
        let mut big = b"\x80\x04}\x94(\x8d".to_vec();
        big.extend_from_slice(&(1000u64).to_le_bytes());
        big.extend(std::iter::repeat_n(b'z', 1000));
        big.push(0x94);
        for i in 0..20_000u32 {
            big.push(op::SHORT_BINUNICODE);
            let k = i.to_string();
            big.push(k.len() as u8);
            big.extend_from_slice(k.as_bytes());
            big.extend_from_slice(&[op::BINGET, 1]);
        }
        big.extend_from_slice(b"u.");
        assert!(load_flat_dict(&big).is_none());
    }
}
