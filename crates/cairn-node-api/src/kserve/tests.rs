use super::*;

const LIMITS: DecodeLimits = DecodeLimits { max_elements: 1000 };

#[test]
fn json_and_binary_forms_decode_alike() {
    let json =
        br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[-3,4]]}]}"#;
    let a = decode(json, None, LIMITS).unwrap();
    let raw: Vec<u8> = [1.0f32, 2.5, -3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let head = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#;
    let mut body = head.to_vec();
    body.extend_from_slice(&raw);
    let b = decode(&body, Some(head.len()), LIMITS).unwrap();
    assert_eq!(a.inputs, b.inputs);
    assert_eq!(
        cairn_core::tensor::tensors_hash(&a.inputs),
        cairn_core::tensor::tensors_hash(&b.inputs)
    );
}

#[test]
fn refuses_bad_tensors() {
    let cases: &[(&[u8], &str)] = &[
        (
            br#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","data":[1,2.5,3]}]}"#,
            "invalid_data",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT8","data":[1,300]}]}"#,
            "invalid_data",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
            "invalid_shape",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            "invalid_shape",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"STRING","data":["a"]}]}"#,
            "invalid_datatype",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[100000],"datatype":"FP32","data":[]}]}"#,
            "too_many_elements",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["NaN"]}]}"#,
            "invalid_data",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            "bad_request",
        ),
        (br#"{"inputs": nope"#, "bad_request"),
    ];
    for (body, code) in cases {
        let err = decode(body, None, LIMITS).err().unwrap();
        assert_eq!(
            err.code(),
            *code,
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    // A binary body shorter than it claims.
    let head = br#"{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#;
    let mut body = head.to_vec();
    body.extend_from_slice(&[0; 10]);
    let err = decode(&body, Some(head.len()), LIMITS).err().unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn f32_json_round_trips_exactly() {
    let xs = [0.1f32, 1.0 / 3.0, f32::MIN_POSITIVE, 3.4e38];
    let raw: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    let json = bytes_to_json(DataType::Fp32, &raw);
    let back = json_values_to_bytes("x", DataType::Fp32, &json, 4).unwrap();
    assert_eq!(raw, back);
}

#[test]
fn json_arrays_are_written_exactly_for_every_dtype() {
    let f32s: Vec<u8> = [0.1f32, -2.5, f32::NAN, 1e-40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    // f32 in its own shortest form (not the f64 widening 0.10000000149011612).
    assert_eq!(
        json_array(DataType::Fp32, &f32s).0.get(),
        "[0.1,-2.5,null,1e-40]"
    );
    let f64s: Vec<u8> = [0.1f64, f64::INFINITY]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(json_array(DataType::Fp64, &f64s).0.get(), "[0.1,null]");
    let i64s: Vec<u8> = [i64::MIN, 0, 7]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(
        json_array(DataType::Int64, &i64s).0.get(),
        "[-9223372036854775808,0,7]"
    );
    assert_eq!(
        json_array(DataType::Bool, &[1, 0, 2]).0.get(),
        "[true,false,true]"
    );
    assert_eq!(json_array(DataType::Uint8, &[]).0.get(), "[]");
    let halves: Vec<u8> = [half::f16::from_f32(0.5)]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(json_array(DataType::Fp16, &halves).0.get(), "[0.5]");
    // What it writes reads back to the same bytes.
    let back = json_values_to_bytes(
        "x",
        DataType::Int64,
        &bytes_to_json(DataType::Int64, &i64s),
        3,
    );
    assert_eq!(back.unwrap(), i64s);
}
