use super::*;
use crate::proto::*;

// Encode-side messages, only in tests, to build models byte by byte.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    g: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

fn tensor(name: &str, elem: i32, dims: &[Option<i64>], params: &[&str]) -> ValueInfoProto {
    let mut dim: Vec<Dimension> = dims
        .iter()
        .map(|d| Dimension {
            value: d.map(DimValue::Value),
        })
        .collect();
    for p in params {
        dim.insert(
            0,
            Dimension {
                value: Some(DimValue::Param((*p).into())),
            },
        );
    }
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::Tensor(TensorType {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

fn model(weights: usize) -> ModelProto {
    ModelProto {
        ir_version: 8,
        producer_name: "cairn-test".into(),
        producer_version: "1".into(),
        graph: Some(GraphProto {
            node: vec![NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                op_type: "MatMul".into(),
                attribute: vec![],
            }],
            name: "g".into(),
            initializer: vec![TensorProto {
                dims: vec![4, 3],
                data_type: 1,
                name: "w".into(),
                raw_data: vec![0x5a; weights],
                ..Default::default()
            }],
            // An initializer listed as an input (IR < 4 style) is a weight, not a real input.
            input: vec![
                tensor("x", 1, &[Some(4)], &["batch"]),
                tensor("w", 1, &[Some(4), Some(3)], &[]),
            ],
            output: vec![tensor("y", 1, &[None, Some(3)], &[])],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
    }
}

fn read(bytes: &[u8]) -> Result<OnnxSignature, OnnxError> {
    read_signature(bytes, Limits::default())
}

#[test]
fn reads_signature_and_drops_initializer_inputs() {
    let sig = read(&model(48).encode_to_vec()).unwrap();
    assert_eq!(sig.ir_version, 8);
    assert_eq!(sig.producer_name, "cairn-test");
    assert_eq!(
        sig.opsets,
        vec![Opset {
            domain: String::new(),
            version: 17
        }]
    );
    assert_eq!(sig.inputs.len(), 1);
    assert_eq!(sig.inputs[0].name, "x");
    assert_eq!(sig.inputs[0].type_name, "tensor(float)");
    assert_eq!(
        sig.inputs[0].shape,
        Some(vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)])
    );
    assert_eq!(
        sig.outputs[0].shape,
        Some(vec![Dim::Unknown, Dim::Fixed(3)])
    );
    let json = serde_json::to_value(&sig.inputs[0]).unwrap();
    assert_eq!(json["shape"], serde_json::json!(["batch", 4]));
    assert_eq!(json["type"], "tensor(float)");
}

#[test]
fn large_weights_stream_past_without_limits() {
    // 8 MiB of weights: far over max_message_bytes, yet fine because initializers are skipped.
    let sig = read(&model(8 << 20).encode_to_vec()).unwrap();
    assert_eq!(sig.inputs[0].name, "x");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = model(64).encode_to_vec();
    for cut in 0..bytes.len() {
        assert!(read(&bytes[..cut]).is_err(), "prefix of {cut} bytes parsed");
    }
    let err = read(&bytes[..bytes.len() - 3]).unwrap_err().to_string();
    assert!(err.contains("not a valid ONNX model"), "{err}");
}

#[test]
fn non_onnx_inputs_are_refused_with_a_reason() {
    for junk in [
        &b"hello, I am a text file and not a model\n"[..],
        &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..],
        &b"PK\x03\x04\x14\0\0\0"[..],
        &[0xffu8; 64][..],
        &b""[..],
    ] {
        let err = read(junk).unwrap_err().to_string();
        assert!(err.starts_with("not a valid ONNX model"), "{err}");
    }
}

#[test]
fn wrong_wire_type_and_missing_parts() {
    // Field 7 (graph) as a varint.
    let err = read(&[0x08, 0x08, 0x38, 0x01]).unwrap_err().to_string();
    assert!(err.contains("field 7 has wire type 0"), "{err}");
    let mut m = model(4);
    m.opset_import.clear();
    assert!(
        read(&m.encode_to_vec())
            .unwrap_err()
            .to_string()
            .contains("no opset_import")
    );
    let mut m = model(4);
    m.graph = None;
    assert!(
        read(&m.encode_to_vec())
            .unwrap_err()
            .to_string()
            .contains("no graph")
    );
}

#[test]
fn hostile_shapes_and_nesting_are_bounded() {
    let mut m = model(4);
    let g = m.graph.as_mut().unwrap();
    g.input[0] = tensor("x", 1, &vec![Some(i64::MAX); 65], &[]);
    let err = read(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(err.contains("rank 65"), "{err}");

    // seq(seq(seq(...))) nested far deeper than prost's recursion limit.
    let mut ty = TypeProto {
        value: Some(TypeValue::Tensor(TensorType {
            elem_type: 1,
            shape: None,
        })),
    };
    for _ in 0..200 {
        ty = TypeProto {
            value: Some(TypeValue::Sequence(SequenceType {
                elem_type: Some(Box::new(ty)),
            })),
        };
    }
    let mut m = model(4);
    m.graph.as_mut().unwrap().output[0] = ValueInfoProto {
        name: "deep".into(),
        r#type: Some(ty),
    };
    let err = read(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(err.contains("recursion"), "{err}");

    // A claimed 2^60-byte string.
    let err = read(&[0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");

    // Too many outputs.
    let mut m = model(4);
    let out = m.graph.as_ref().unwrap().output[0].clone();
    m.graph.as_mut().unwrap().output = vec![out; 5000];
    assert!(
        read(&m.encode_to_vec())
            .unwrap_err()
            .to_string()
            .contains("more than 4096")
    );
}

#[test]
fn sequence_and_map_types_use_onnxruntime_spelling() {
    let mut m = model(4);
    m.graph.as_mut().unwrap().output.push(ValueInfoProto {
        name: "probs".into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::Sequence(SequenceType {
                elem_type: Some(Box::new(TypeProto {
                    value: Some(TypeValue::Map(MapType {
                        key_type: 7,
                        value_type: Some(Box::new(TypeProto {
                            value: Some(TypeValue::Tensor(TensorType {
                                elem_type: 1,
                                shape: None,
                            })),
                        })),
                    })),
                })),
            })),
        }),
    });
    let sig = read(&m.encode_to_vec()).unwrap();
    assert_eq!(sig.outputs[1].type_name, "seq(map(int64,tensor(float)))");
    assert_eq!(sig.outputs[1].elem_type, None);
}

/// A tensor whose data a runtime would read from `location` beside the model.
fn external(name: &str, location: &str, flag: bool) -> TensorProto {
    TensorProto {
        dims: vec![4, 3],
        data_type: 1,
        name: name.into(),
        external_data: vec![StringStringEntryProto {
            key: "location".into(),
            value: location.into(),
        }],
        data_location: i32::from(flag),
        ..Default::default()
    }
}

#[test]
fn tensors_with_external_data_are_refused_wherever_they_hide() {
    let refused = |m: &ModelProto| match read(&m.encode_to_vec()) {
        Err(OnnxError::ExternalData(name)) => name,
        other => panic!("expected external data to be refused, got {other:?}"),
    };
    // An initializer pointing at a file outside the model (the node's key, say).
    let mut m = model(0);
    m.graph.as_mut().unwrap().initializer[0] = external("w", "../../chain/node.key", true);
    assert_eq!(refused(&m), "w");
    // `external_data` alone, without the location flag, is refused as well.
    m.graph.as_mut().unwrap().initializer[0] = external("w", "key", false);
    assert_eq!(refused(&m), "w");
    // In a Constant node's value attribute.
    let mut m = model(48);
    m.graph.as_mut().unwrap().node.push(NodeProto {
        output: vec!["c".into()],
        op_type: "Constant".into(),
        attribute: vec![AttributeProto {
            name: "value".into(),
            t: Some(external("c", "/etc/passwd", true)),
            g: None,
        }],
        ..Default::default()
    });
    assert_eq!(refused(&m), "c");
    // In a subgraph's initializer (an If branch).
    let mut m = model(48);
    let mut branch = model(0).graph.unwrap();
    branch.initializer[0] = external("deep", "secret", true);
    m.graph.as_mut().unwrap().node.push(NodeProto {
        op_type: "If".into(),
        attribute: vec![AttributeProto {
            name: "then_branch".into(),
            t: None,
            g: Some(branch),
        }],
        ..Default::default()
    });
    assert_eq!(refused(&m), "deep");
    // The same models with their data inside are fine.
    assert!(read(&model(48).encode_to_vec()).is_ok());
}
