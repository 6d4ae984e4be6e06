//! The tool as an ONNX model (IR 8, opset 17). The messages are the subset of `onnx.proto` (proto2) a
//! tool needs, declared with prost's derive: field numbers and types as in onnx.proto; repeated numbers
//! unpacked, as proto2 writes them.
//!
//! Graph (input `expression` `[n, N]` float, log1p-CP10k panel expression):
//! `features = MatMul(expression, operator)` (surrogate: `MatMul(MatMul(expression, surrogate_left),
//! surrogate_right)`), `latent = Add(MatMul(features, adaptor_weight), adaptor_bias)`,
//! `pseudotime = Reshape(Add(MatMul(latent, pseudotime_weight), pseudotime_bias), [-1])`,
//! `class_probabilities = Softmax(Add(MatMul(latent, classes_weight), classes_bias), axis = -1)`.

use prost::Message;

use crate::tool::{Stage, Tool};

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// AttributeType: INT = 2.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// TensorProto.DataType: FLOAT = 1, INT64 = 7.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

fn tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        op_type: op.into(),
        attribute: Vec::new(),
    }
}

fn value_info(name: &str, dims: &[Option<usize>], doc: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Some(v) => Dimension {
                                dim_value: Some(*v as i64),
                                dim_param: None,
                            },
                            None => Dimension {
                                dim_value: None,
                                dim_param: Some("n".into()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
        doc_string: doc.into(),
    }
}

/// The ONNX bytes of a tool; `metadata` goes into the model's metadata_props.
pub fn to_onnx(tool: &Tool, metadata: &[(String, String)]) -> Vec<u8> {
    let (n, d, c) = (tool.n_genes(), tool.d_latent(), tool.n_classes());
    let mut nodes = Vec::new();
    let mut init = Vec::new();
    match &tool.stage {
        Stage::Operator(op) => {
            init.push(tensor("operator", &[op.rows, op.cols], &op.data));
            nodes.push(node("MatMul", &["expression", "operator"], "features"));
        }
        Stage::Surrogate(s) => {
            init.push(tensor(
                "surrogate_left",
                &[s.left.rows, s.left.cols],
                &s.left.data,
            ));
            init.push(tensor(
                "surrogate_right",
                &[s.right.rows, s.right.cols],
                &s.right.data,
            ));
            nodes.push(node("MatMul", &["expression", "surrogate_left"], "factors"));
            nodes.push(node("MatMul", &["factors", "surrogate_right"], "features"));
        }
    }
    init.push(tensor(
        "adaptor_weight",
        &[tool.adaptor.rows, d],
        &tool.adaptor.data,
    ));
    init.push(tensor("adaptor_bias", &[d], &tool.adaptor_bias));
    init.push(tensor("pseudotime_weight", &[d, 1], &tool.pseudotime.data));
    init.push(tensor("pseudotime_bias", &[1], &[tool.pseudotime_bias]));
    init.push(tensor("classes_weight", &[d, c], &tool.classes.data));
    init.push(tensor("classes_bias", &[c], &tool.classes_bias));
    init.push(TensorProto {
        dims: vec![1],
        data_type: INT64,
        name: "flat".into(),
        raw_data: (-1i64).to_le_bytes().to_vec(),
    });
    nodes.push(node("MatMul", &["features", "adaptor_weight"], "latent_linear"));
    nodes.push(node("Add", &["latent_linear", "adaptor_bias"], "latent"));
    nodes.push(node(
        "MatMul",
        &["latent", "pseudotime_weight"],
        "pseudotime_linear",
    ));
    nodes.push(node(
        "Add",
        &["pseudotime_linear", "pseudotime_bias"],
        "pseudotime_column",
    ));
    nodes.push(node("Reshape", &["pseudotime_column", "flat"], "pseudotime"));
    nodes.push(node("MatMul", &["latent", "classes_weight"], "class_linear"));
    nodes.push(node("Add", &["class_linear", "classes_bias"], "class_logits"));
    let mut softmax = node("Softmax", &["class_logits"], "class_probabilities");
    softmax.attribute.push(AttributeProto {
        name: "axis".into(),
        i: Some(-1),
        r#type: 2,
    });
    nodes.push(softmax);
    let graph = GraphProto {
        node: nodes,
        name: "scinterp_tool".into(),
        initializer: init,
        input: vec![value_info(
            "expression",
            &[None, Some(n)],
            "log1p(CP10k) expression of the panel genes (card.json: panel), one row per cell",
        )],
        output: vec![
            value_info("latent", &[None, Some(d)], "adaptor output"),
            value_info(
                "pseudotime",
                &[None],
                "root-anchored pseudotime (linear readout of the latent)",
            ),
            value_info(
                "class_probabilities",
                &[None, Some(c)],
                "cell-type probabilities (card.json: labels)",
            ),
        ],
    };
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "scinterp".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "scinterp pseudotime + cell-type tool; see card.json".into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}
