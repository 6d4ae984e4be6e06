//! Fast paths for the flat dictionary pickles of Geneformer: they borrow from the bytes and take only
//! the exact shapes those files have, returning `None` (the VM decides) for anything else.

use super::op;
use super::Value;

/// A fast path for the commonest dictionary pickle: one flat `dict` whose keys are strings and whose values
/// are strings or small ints (Geneformer's token, gene-name and Ensembl-mapping dictionaries), written with
/// protocol 2–5 framing and memo references. Returns the entries in file order (a repeated key appears
/// again, later entries win as in Python), or `None` for anything else (any other opcode, nesting, a
/// malformed or truncated input), in which case [`load_dict`](super::load_dict) decides. It never executes code either.
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
/// dictionaries), borrowed from the bytes: the keys and values [`load_dict`](super::load_dict) returns for such a file, in
/// file order. Only the exact shape numpy writes is taken: `numpy.core.multiarray.scalar` (or
/// `numpy._core.multiarray.scalar`) applied to `(dtype, 8 raw bytes)`, the dtype being
/// `numpy.dtype('f8' or '<f8', bool, bool)` with a `BUILD` state of 8 fields whose byte order is `<` or
/// `|`, and memo references to any of these. Anything else (another dtype or global, a big-endian byte
/// order, nesting, a malformed or truncated input) returns `None`, and [`load_dict`](super::load_dict) decides. It never
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
