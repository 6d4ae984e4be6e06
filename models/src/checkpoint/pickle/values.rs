//! The values a pickle program builds: whitelisted globals, tensor views and the decoded object tree.

use super::{storage_type_name, DType};

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
