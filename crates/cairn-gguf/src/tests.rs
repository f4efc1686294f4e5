//! The reader against files built here byte by byte (valid, truncated, hostile) and against the
//! real SmolLM2 file `scripts/test-deps.sh` fetches.

use super::*;

/// A GGUF file, written the way llama.cpp's writer lays it out.
#[derive(Clone)]
struct Gguf {
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32)>,
    alignment: u64,
    /// Overrides of a tensor's offset, by index.
    offsets: Vec<(usize, u64)>,
}

fn s(v: &str) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(v.as_bytes());
    b
}

impl Gguf {
    fn new() -> Self {
        Self {
            version: 3,
            kv: vec![],
            tensors: vec![],
            alignment: 32,
            offsets: vec![],
        }
    }

    fn raw(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
        self.kv.push((key.into(), ty, value));
        self
    }

    fn str(self, key: &str, v: &str) -> Self {
        self.raw(key, vt::STRING, s(v))
    }

    fn u32(self, key: &str, v: u32) -> Self {
        self.raw(key, vt::U32, v.to_le_bytes().to_vec())
    }

    fn bool(self, key: &str, v: bool) -> Self {
        self.raw(key, vt::BOOL, vec![v as u8])
    }

    fn strings(self, key: &str, items: &[&str]) -> Self {
        let mut b = vt::STRING.to_le_bytes().to_vec();
        b.extend((items.len() as u64).to_le_bytes());
        for i in items {
            b.extend(s(i));
        }
        self.raw(key, vt::ARRAY, b)
    }

    fn i32s(self, key: &str, n: usize) -> Self {
        let mut b = vt::I32.to_le_bytes().to_vec();
        b.extend((n as u64).to_le_bytes());
        b.extend(std::iter::repeat_n(1i32.to_le_bytes(), n).flatten());
        self.raw(key, vt::ARRAY, b)
    }

    fn without(mut self, key: &str) -> Self {
        self.kv.retain(|(k, _, _)| k != key);
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], ty: u32) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), ty));
        self
    }

    fn header(&self) -> (Vec<u8>, u64) {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend(s(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        for (i, (name, dims, ty)) in self.tensors.iter().enumerate() {
            b.extend(s(name));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            let at = self
                .offsets
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(offset, |(_, o)| *o);
            b.extend(at.to_le_bytes());
            let t = GgmlType::from_id(*ty).unwrap();
            let n = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d));
            let bytes = n.and_then(|n| t.bytes(dims[0], n)).unwrap_or(0);
            offset += bytes.next_multiple_of(self.alignment);
        }
        (b, offset)
    }

    fn bytes(&self) -> Vec<u8> {
        let (mut b, data) = self.header();
        b.resize(b.len().next_multiple_of(self.alignment as usize), 0);
        b.extend((0..data).map(|i| (i % 251) as u8));
        b
    }
}

/// A small llama-shaped model with a byte-level BPE tokenizer.
fn small() -> Gguf {
    Gguf::new()
        .str("general.architecture", "llama")
        .str("general.name", "tiny")
        .u32("general.file_type", 3)
        .u32("llama.context_length", 2048)
        .u32("llama.embedding_length", 8)
        .u32("llama.block_count", 1)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .strings(
            "tokenizer.ggml.tokens",
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b"],
        )
        .i32s("tokenizer.ggml.token_type", 5)
        .strings("tokenizer.ggml.merges", &["a b"])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .bool("tokenizer.ggml.add_bos_token", false)
        .str("tokenizer.chat_template", "{{ messages }}")
        .tensor("token_embd.weight", &[8, 5], 0)
        .tensor("blk.0.attn_q.weight", &[32, 4], 3)
        .tensor("output_norm.weight", &[8], 0)
}

fn read(bytes: &[u8]) -> Result<GgufMetadata, GgufError> {
    read_metadata(bytes, Limits::default())
}

fn refused(g: &Gguf) -> String {
    match read(&g.bytes()) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_a_small_llama() {
    let bytes = small().bytes();
    let m = read(&bytes).unwrap();
    let header = small().header().0.len() as u64;
    assert_eq!(
        m,
        GgufMetadata {
            version: 3,
            architecture: "llama".into(),
            name: Some("tiny".into()),
            size_label: None,
            license: None,
            parameter_count: 40 + 128 + 8,
            quantization: "Q4_1".into(),
            tensor_types: [("F32".into(), 2), ("Q4_1".into(), 1)].into(),
            tensor_count: 3,
            context_length: Some(2048),
            embedding_length: Some(8),
            block_count: Some(1),
            head_count: Some(2),
            head_count_kv: Some(1),
            vocab_size: Some(5),
            tokenizer: Some(GgufTokenizer {
                model: "gpt2".into(),
                pre: Some("smollm".into()),
                tokens: 5,
                merges: 1,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                add_bos_token: Some(false),
            }),
            chat_template: Some("{{ messages }}".into()),
            data_offset: header.next_multiple_of(32),
            // 160 bytes of F32 embeddings, 4 blocks of Q4_1 (80, padded to 96), 32 bytes of F32.
            data_bytes: 160 + 96 + 32,
        }
    );
    assert_eq!(bytes.len() as u64, m.data_offset + m.data_bytes);
}

#[test]
fn the_last_tensor_need_not_be_padded_and_alignment_is_honoured() {
    let mut bytes = small().bytes();
    bytes.truncate(bytes.len() - 32 + 8 * 4);
    read(&bytes).unwrap();
    let g = small().raw("general.alignment", vt::U32, 64u32.to_le_bytes().to_vec());
    let g = Gguf { alignment: 64, ..g };
    let m = read(&g.bytes()).unwrap();
    assert_eq!(m.data_offset % 64, 0);
    assert_eq!(m.data_bytes, 192 + 128 + 64);
}

#[test]
fn quantization_falls_back_to_the_type_holding_most_bytes() {
    let g = small().without("general.file_type");
    assert_eq!(read(&g.bytes()).unwrap().quantization, "F32");
    let g = small()
        .u32("general.file_type", 99)
        .without("general.file_type");
    assert_eq!(read(&g.bytes()).unwrap().quantization, "F32");
    let g = small()
        .without("general.file_type")
        .u32("general.file_type", 99);
    assert_eq!(read(&g.bytes()).unwrap().quantization, "file type 99");
}

#[test]
fn a_model_without_a_tokenizer_says_so() {
    let mut g = small();
    g.kv.retain(|(k, _, _)| !k.starts_with("tokenizer."));
    let m = read(&g.bytes()).unwrap();
    assert_eq!(m.tokenizer, None);
    assert_eq!(m.vocab_size, None);
    assert_eq!(m.chat_template, None);
}

#[test]
fn every_truncation_is_refused() {
    let bytes = small().bytes();
    for end in 0..bytes.len() - 32 + 8 * 4 {
        let err = read(&bytes[..end]).unwrap_err();
        assert!(
            matches!(err, GgufError::Truncated(_)),
            "cut at {end}: {err}"
        );
    }
}

#[test]
fn a_cut_in_the_tensor_data_names_the_tensor_and_the_sizes() {
    let bytes = small().bytes();
    let err = read(&bytes[..bytes.len() - 40]).unwrap_err().to_string();
    assert!(
        err.contains("tensor `output_norm.weight` needs bytes up to 288"),
        "{err}"
    );
    assert!(err.contains("is truncated"), "{err}");
}

#[test]
fn bytes_after_the_last_tensor_are_refused() {
    let mut bytes = small().bytes();
    bytes.extend([0u8; 33]);
    let err = read(&bytes).unwrap_err().to_string();
    assert!(err.contains("33 bytes follow the last tensor"), "{err}");
}

#[test]
fn headers_that_are_not_gguf_are_refused_with_the_reason() {
    let err = read(b"\x08\x01\x12\x00rest").unwrap_err().to_string();
    assert!(err.contains("not the magic `GGUF`"), "{err}");
    for (version, says) in [
        (1u32, "obsolete"),
        (3u32.swap_bytes(), "big-endian"),
        (4, "versions 2 and 3"),
    ] {
        let g = Gguf { version, ..small() };
        assert!(refused(&g).contains(says), "{version}");
    }
    read(
        &Gguf {
            version: 2,
            ..small()
        }
        .bytes(),
    )
    .unwrap();
}

#[test]
fn hostile_lengths_are_refused_before_they_size_anything() {
    // A key claiming 2^64-1 bytes.
    let mut b = small().header().0[..24].to_vec();
    b.extend(u64::MAX.to_le_bytes());
    let err = read(&b).unwrap_err().to_string();
    assert!(err.contains("at most 256 are accepted"), "{err}");
    // A string value claiming 2^64-1 bytes.
    let err = refused(&small().raw("x", vt::STRING, u64::MAX.to_le_bytes().to_vec()));
    assert!(err.contains("at most 1048576 are accepted"), "{err}");

    // An array claiming 2^40 strings.
    let mut arr = vt::STRING.to_le_bytes().to_vec();
    arr.extend((1u64 << 40).to_le_bytes());
    let err = refused(&small().raw("x", vt::ARRAY, arr));
    assert!(err.contains("array of 1099511627776 elements"), "{err}");

    // Counts of tensors and entries.
    let mut b = small().bytes();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(
        read(&b)
            .unwrap_err()
            .to_string()
            .contains("1099511627776 tensors")
    );
    let mut b = small().bytes();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(
        read(&b)
            .unwrap_err()
            .to_string()
            .contains("metadata entries")
    );

    // A header that never ends inside its bound.
    let limits = Limits {
        max_header_bytes: 100,
        ..Limits::default()
    };
    let err = read_metadata(small().bytes().as_slice(), limits).unwrap_err();
    assert!(matches!(err, GgufError::Limit(_)), "{err}");
}

#[test]
fn an_alignment_that_would_pad_beyond_reason_is_refused_without_allocating() {
    // 0 tensors, one entry: general.alignment = 2^63 as a u64 (61 bytes in all).
    let g = Gguf::new().raw(
        "general.alignment",
        vt::U64,
        (1u64 << 63).to_le_bytes().to_vec(),
    );
    let bytes = g.header().0;
    assert!(bytes.len() < 64);
    let err = read(&bytes).unwrap_err().to_string();
    assert!(err.contains("requires a u32"), "{err}");
    let g = Gguf::new().raw(
        "general.alignment",
        vt::U32,
        (1u32 << 31).to_le_bytes().to_vec(),
    );
    let err = read(&g.header().0).unwrap_err().to_string();
    assert!(err.contains("at most 1048576 bytes"), "{err}");
    // A permitted large alignment pads by reading, not by allocating.
    let g = Gguf {
        alignment: 1 << 20,
        ..small().raw(
            "general.alignment",
            vt::U32,
            (1u32 << 20).to_le_bytes().to_vec(),
        )
    };
    let m = read(&g.bytes()).unwrap();
    assert_eq!(m.data_offset, 1 << 20);
}

#[test]
fn long_keys_are_refused() {
    let err = refused(&small().str(&"k".repeat(257), "v"));
    assert!(err.contains("at most 256 are accepted"), "{err}");
    read(&small().str(&"k".repeat(256), "v").bytes()).unwrap();
}

#[test]
fn malformed_metadata_is_refused_with_the_key() {
    let nested = {
        let mut b = vt::ARRAY.to_le_bytes().to_vec();
        b.extend(1u64.to_le_bytes());
        b
    };
    let cases: Vec<(Gguf, &str)> = vec![
        (small().raw("x", vt::ARRAY, nested), "array of arrays"),
        (
            small().raw("x", 13, vec![]),
            "`x` has unknown value type 13",
        ),
        (
            small().raw("x", vt::BOOL, vec![2]),
            "`x` is a bool stored as 2",
        ),
        (
            small().u32("general.name", 1),
            "`general.name` appears twice",
        ),
        (small().str("", "v"), "a metadata key is empty"),
        (
            small().raw("x", vt::STRING, {
                let mut b = 2u64.to_le_bytes().to_vec();
                b.extend([0xff, 0xfe]);
                b
            }),
            "is not UTF-8",
        ),
        (
            small().without("general.architecture"),
            "`general.architecture` is missing",
        ),
        (
            small()
                .without("general.architecture")
                .u32("general.architecture", 1),
            "`general.architecture` is not a string",
        ),
        (
            small().raw("general.alignment", vt::U32, 48u32.to_le_bytes().to_vec()),
            "must be a power of two of at most",
        ),
        (
            small().without("tokenizer.ggml.tokens"),
            "has no `tokenizer.ggml.tokens`",
        ),
        (
            small()
                .without("tokenizer.ggml.token_type")
                .i32s("tokenizer.ggml.token_type", 4),
            "has 4 entries for a vocabulary of 5 tokens",
        ),
        (
            small()
                .without("tokenizer.ggml.eos_token_id")
                .u32("tokenizer.ggml.eos_token_id", 5),
            "`tokenizer.ggml.eos_token_id` is 5, outside the vocabulary",
        ),
        (
            small()
                .without("tokenizer.ggml.tokens")
                .strings("tokenizer.ggml.tokens", &[]),
            "vocabulary is empty",
        ),
        (
            small()
                .without("tokenizer.ggml.merges")
                .i32s("tokenizer.ggml.merges", 1),
            "`tokenizer.ggml.merges` is not an array",
        ),
        (
            small().without("llama.context_length").raw(
                "llama.context_length",
                vt::I32,
                (-1i32).to_le_bytes().to_vec(),
            ),
            "`llama.context_length` is not a non-negative integer",
        ),
    ];
    for (g, says) in cases {
        let err = refused(&g);
        assert!(err.contains(says), "expected `{says}` in `{err}`");
    }
}

#[test]
fn hostile_tensor_descriptions_are_refused() {
    let long = "t".repeat(64);
    let cases: Vec<(Gguf, &str)> = vec![
        (
            small().tensor("output_norm.weight", &[8], 0),
            "`output_norm.weight` appears twice",
        ),
        (small().tensor(&long, &[8], 0), "at most 63 are accepted"),
        (small().tensor("x", &[32, 0], 0), "dimension 1 of size 0"),
        (
            small().tensor("x", &[1 << 32, 1 << 32], 0),
            "too many elements",
        ),
        (
            small().tensor("x", &[16], 3),
            "not a whole number of 32-element blocks",
        ),
    ];
    for (g, says) in cases {
        let err = refused(&g);
        assert!(err.contains(says), "expected `{says}` in `{err}`");
    }
    // Ranks and types the builder cannot express: patch the header.
    let base = small().tensor("x", &[32], 0);
    let (header, _) = base.header();
    let at = header.len() - 8 - 4 - 8 - 4;
    for (rank, says) in [(0u32, "has 0 dimensions"), (5, "has 5 dimensions")] {
        let mut b = base.bytes();
        b[at..at + 4].copy_from_slice(&rank.to_le_bytes());
        let err = read(&b).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    for ty in [4u32, 31, 40, u32::MAX] {
        let mut b = base.bytes();
        b[at + 12..at + 16].copy_from_slice(&ty.to_le_bytes());
        let err = read(&b).unwrap_err().to_string();
        assert!(err.contains(&format!("element type {ty}")), "{err}");
    }
    // Offsets: overlapping, out of order, or leaving a gap.
    for offset in [0u64, 100, 192, 512] {
        let mut g = small();
        g.offsets.push((1, offset));
        let err = refused(&g);
        assert!(
            err.contains("the tensors before it end at 160"),
            "{offset}: {err}"
        );
    }
}

/// The SmolLM2 file the devnet serves, as `scripts/test-deps.sh` fetches it.
#[test]
fn reads_smollm2_135m_instruct() {
    let path = match std::env::var_os("CAIRN_LLM_MODEL") {
        Some(p) => std::path::PathBuf::from(p),
        None if std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_some() => {
            panic!("CAIRN_LLM_MODEL is not set; run scripts/test.sh")
        }
        None => {
            eprintln!("SKIPPED: CAIRN_LLM_MODEL is not set");
            return;
        }
    };
    let file = std::fs::File::open(path).unwrap();
    let m = read_metadata(file, Limits::default()).unwrap();
    let template = m.chat_template.clone().unwrap();
    assert!(
        template.starts_with("{% for message in messages %}"),
        "{template}"
    );
    assert_eq!(
        m,
        GgufMetadata {
            version: 3,
            architecture: "llama".into(),
            name: Some("Smollm2 135M 8k Lc100K Mix1 Ep2".into()),
            size_label: Some("135M".into()),
            license: Some("apache-2.0".into()),
            parameter_count: 134_515_008,
            quantization: "Q4_1".into(),
            tensor_types: [("F32".into(), 61), ("Q4_1".into(), 210), ("Q8_0".into(), 1)].into(),
            tensor_count: 272,
            context_length: Some(8192),
            embedding_length: Some(576),
            block_count: Some(30),
            head_count: Some(9),
            head_count_kv: Some(3),
            vocab_size: Some(49152),
            tokenizer: Some(GgufTokenizer {
                model: "gpt2".into(),
                pre: Some("smollm".into()),
                tokens: 49152,
                merges: 48900,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                add_bos_token: Some(false),
            }),
            chat_template: Some(template),
            data_offset: 1_785_664,
            data_bytes: 98_362_432 - 1_785_664,
        }
    );
}

#[test]
fn read_model_keeps_every_value_and_tensor() {
    let bytes = small().bytes();
    let model = read_model(&bytes, Limits::default()).unwrap();
    assert_eq!(model.metadata, read(&bytes).unwrap());
    let tokens = match &model.values["tokenizer.ggml.tokens"] {
        MetaValue::Array { items, .. } => items
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        tokens,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b"]
    );
    assert_eq!(model.values["llama.context_length"].as_u64(), Some(2048));
    let names: Vec<_> = model
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.ty.name, t.dims.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("token_embd.weight", "F32", vec![8, 5]),
            ("blk.0.attn_q.weight", "Q4_1", vec![32, 4]),
            ("output_norm.weight", "F32", vec![8]),
        ]
    );
    let q = model.tensor_bytes(&bytes, &model.tensors[1]);
    assert_eq!(q.len(), 80);
    // The builder fills the data section with i % 251 from its start.
    assert_eq!(q[0], 160);
}
