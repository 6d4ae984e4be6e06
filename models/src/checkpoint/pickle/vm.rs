//! The stack machine: runs a pickle program over an arena of objects, then copies the result out.

use std::cell::Cell;

use super::{
    op, DType, FastMap, Global, PickleError, PickleErrorKind, StorageRef, TensorRef, Value, MAX_DEPTH,
};

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
