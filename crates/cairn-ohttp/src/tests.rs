use crate::{
    Aead, GatewayKey, KeyConfig, OhttpError,
    client::{encapsulate_chunked, encapsulate_with},
    ctx::Sender,
    encapsulate,
    message::{self, StreamedResponse},
};
use data_encoding::HEXLOWER;
use hpke::danger::streaming_enc::{AeadKey, AeadNonce, ExporterSecret, create_sender_context};

fn hex(s: &str) -> Vec<u8> {
    HEXLOWER.decode(s.as_bytes()).unwrap()
}

// RFC 9458 Appendix A.
const CONFIG: &str =
    "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003";
const SK_R: &str = "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a";
const SK_E: &str = "bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73";
const REQUEST: &str = "00034745540568747470730b6578616d706c652e636f6d012f";
const ENC_REQUEST: &str = "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525";
const RESPONSE: &str = "0140c8";
const RESPONSE_NONCE: &str = "c789e7151fcba46158ca84b04464910d";
const ENC_RESPONSE: &str = "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd";

/// An encapsulated key and its sealing context.
type SenderSetup = Result<(Vec<u8>, Sender), OhttpError>;

/// RFC 9180 base-mode SetupS with a given ephemeral key, computed here from the RFC's own
/// definitions (x25519, HKDF) rather than through the `hpke` crate, so the test checks the
/// crate's receiver against an independent sender.
fn fixed_ephemeral_sender(sk_e: [u8; 32]) -> impl Fn(Aead, &[u8], &[u8]) -> SenderSetup {
    move |aead, pk_r, info| {
        assert_eq!(aead, Aead::Aes128Gcm);
        let sk = x25519_dalek::StaticSecret::from(sk_e);
        let pk_e = x25519_dalek::PublicKey::from(&sk);
        let pk_r: [u8; 32] = pk_r.try_into().unwrap();
        let dh = sk.diffie_hellman(&x25519_dalek::PublicKey::from(pk_r));
        type H = hkdf::Hkdf<sha2::Sha256>;
        let extract = |suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]| {
            let mut m = b"HPKE-v1".to_vec();
            m.extend_from_slice(suite);
            m.extend_from_slice(label);
            m.extend_from_slice(ikm);
            H::extract(Some(salt), &m).1
        };
        let expand = |prk: &H, suite: &[u8], label: &[u8], info: &[u8], n: usize| {
            let mut m = (n as u16).to_be_bytes().to_vec();
            m.extend_from_slice(b"HPKE-v1");
            m.extend_from_slice(suite);
            m.extend_from_slice(label);
            m.extend_from_slice(info);
            let mut out = vec![0; n];
            prk.expand(&m, &mut out).unwrap();
            out
        };
        let kem_suite = b"KEM\x00\x20";
        let mut kem_context = pk_e.as_bytes().to_vec();
        kem_context.extend_from_slice(&pk_r);
        let eae = extract(kem_suite, b"", b"eae_prk", dh.as_bytes());
        let shared = expand(&eae, kem_suite, b"shared_secret", &kem_context, 32);
        let suite = b"HPKE\x00\x20\x00\x01\x00\x01";
        let mut ks = vec![0u8];
        let psk_id_hash = H::extract(
            Some(b""),
            &[b"HPKE-v1".as_slice(), suite, b"psk_id_hash"].concat(),
        )
        .0;
        let info_hash = H::extract(
            Some(b""),
            &[b"HPKE-v1".as_slice(), suite, b"info_hash", info].concat(),
        )
        .0;
        ks.extend_from_slice(&psk_id_hash);
        ks.extend_from_slice(&info_hash);
        let secret = extract(suite, &shared, b"secret", b"");
        let mut key = AeadKey::default();
        key.0
            .copy_from_slice(&expand(&secret, suite, b"key", &ks, 16));
        let mut nonce = AeadNonce::default();
        nonce
            .0
            .copy_from_slice(&expand(&secret, suite, b"base_nonce", &ks, 12));
        let mut exp = ExporterSecret::default();
        exp.0
            .copy_from_slice(&expand(&secret, suite, b"exp", &ks, 32));
        Ok((
            pk_e.as_bytes().to_vec(),
            Sender::Aes(create_sender_context(&key, nonce, exp)),
        ))
    }
}

#[test]
fn rfc_9458_appendix_a_decrypts_and_reencrypts_exactly() {
    let gateway = GatewayKey::from_secret(1, &hex(SK_R)).unwrap();
    assert_eq!(
        gateway.config().encoded(),
        hex(CONFIG),
        "the key configuration"
    );
    let config = KeyConfig::decode(&hex(CONFIG)).unwrap();
    assert_eq!(&config, gateway.config());
    assert_eq!(config.aeads(), [Aead::Aes128Gcm, Aead::ChaCha20Poly1305]);

    // The gateway opens the RFC's request and seals the RFC's response with its nonce.
    let (request, sealer) = gateway
        .decapsulate_with_nonce(&hex(ENC_REQUEST), Some(hex(RESPONSE_NONCE)))
        .unwrap();
    assert_eq!(request, hex(REQUEST));
    assert_eq!(sealer.seal(&hex(RESPONSE)), hex(ENC_RESPONSE));

    // The client seals the RFC's request with its ephemeral key and opens its response.
    let sk_e: [u8; 32] = hex(SK_E).try_into().unwrap();
    let (enc, opener) =
        encapsulate_with(&config, &hex(REQUEST), &fixed_ephemeral_sender(sk_e)).unwrap();
    assert_eq!(enc, hex(ENC_REQUEST));
    assert_eq!(opener.open(&hex(ENC_RESPONSE)).unwrap(), hex(RESPONSE));

    // And the Binary HTTP inside (trailing empty sections left out, as the RFC does).
    let req = message::decode_request(&hex(REQUEST)).unwrap();
    assert_eq!((req.method().as_str(), req.uri().path()), ("GET", "/"));
    assert!(req.body().is_empty());
    assert_eq!(
        message::decode_response(&hex(RESPONSE)).unwrap().status(),
        200
    );
}

fn gateway() -> GatewayKey {
    GatewayKey::derive(7, &[42; 32])
}

#[test]
fn both_suites_round_trip_and_each_answer_opens_only_for_its_request() {
    for aead in [Aead::Aes128Gcm, Aead::ChaCha20Poly1305] {
        let g = gateway();
        let config = KeyConfig::new(7, *g.config().public_key(), &[aead]);
        let (msg, opener) = encapsulate(&config, b"hello gateway").unwrap();
        assert_eq!(u16::from_be_bytes([msg[5], msg[6]]), aead.id());
        let (req, sealer) = g.decapsulate(&msg).unwrap();
        assert_eq!(req, b"hello gateway");
        let answer = sealer.seal(b"hello client");
        // Another request's opener cannot read it.
        let (_, other) = encapsulate(&config, b"hello gateway").unwrap();
        assert!(matches!(other.open(&answer), Err(OhttpError::Open)));
        assert_eq!(opener.open(&answer).unwrap(), b"hello client");
    }
}

#[test]
fn every_flipped_byte_and_every_cut_is_refused() {
    let g = gateway();
    let (msg, _) = encapsulate(g.config(), b"a request").unwrap();
    for i in 0..msg.len() {
        let mut m = msg.clone();
        m[i] ^= 1;
        assert!(g.decapsulate(&m).is_err(), "byte {i} flipped");
        assert!(g.decapsulate(&msg[..i]).is_err(), "cut at {i}");
    }
    let (msg, opener) = encapsulate(g.config(), b"a request").unwrap();
    let (_, sealer) = g.decapsulate(&msg).unwrap();
    let answer = sealer.seal(b"an answer");
    let mut bad = answer.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(opener.open(&bad), Err(OhttpError::Open)));
}

#[test]
fn wrong_key_id_and_unknown_suites_say_so() {
    let g = gateway();
    let (mut msg, _) = encapsulate(g.config(), b"x").unwrap();
    msg[0] = 9;
    assert!(matches!(
        g.decapsulate(&msg),
        Err(OhttpError::KeyId { got: 9, want: 7 })
    ));
    for (at, id) in [(1, 0x0010u16), (3, 0x0002), (5, 0x0002), (5, 0xffff)] {
        let (mut msg, _) = encapsulate(g.config(), b"x").unwrap();
        msg[at..at + 2].copy_from_slice(&id.to_be_bytes());
        let e = g.decapsulate(&msg).unwrap_err();
        assert_eq!(e.code(), "ohttp_unsupported_suite", "{e}");
    }
    // A sealed request to another gateway's key does not open.
    let other = GatewayKey::derive(7, &[43; 32]);
    let (msg, _) = encapsulate(other.config(), b"x").unwrap();
    assert!(matches!(g.decapsulate(&msg), Err(OhttpError::Open)));
}

#[test]
fn key_config_lists_skip_unknown_suites_and_refuse_malformed_ones() {
    let g = gateway();
    let mut foreign = hex(CONFIG);
    foreign[1..3].copy_from_slice(&0x0010u16.to_be_bytes()); // P-256: not ours
    let foreign = KeyConfig::decode(&foreign).unwrap_err();
    assert_eq!(foreign.code(), "ohttp_unsupported_suite");
    let mut p256 = hex(CONFIG);
    p256[1..3].copy_from_slice(&0x0010u16.to_be_bytes());
    let mut list = (p256.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&p256);
    list.extend(KeyConfig::encode_list(&[g.config()]));
    assert_eq!(
        KeyConfig::decode_list(&list).unwrap(),
        vec![g.config().clone()]
    );
    assert!(KeyConfig::decode_list(&list[..list.len() - 1]).is_err());
    assert!(KeyConfig::decode(&hex(CONFIG)[..40]).is_err());
}

#[test]
fn chunked_answers_open_as_they_arrive_and_a_cut_one_is_refused() {
    let g = gateway();
    let request = vec![b'q'; 40_000];
    let (msg, mut opener) = encapsulate_chunked(g.config(), &request).unwrap();
    let (got, mut sealer) = g.decapsulate_chunked(&msg).unwrap();
    assert_eq!(got, request);
    let mut wire = Vec::new();
    let head = StreamedResponse::head(http::StatusCode::OK, &http::HeaderMap::new());
    wire.extend(sealer.chunk(&head));
    wire.extend(sealer.chunk(&StreamedResponse::content(b"data: one\n\n")));
    let first_two = wire.len();
    wire.extend(sealer.finish(&StreamedResponse::end()));
    // Byte by byte: the first two pieces are readable before the final chunk arrives.
    let mut plain = Vec::new();
    for (i, b) in wire.iter().enumerate() {
        plain.extend(opener.push(&[*b]).unwrap());
        if i + 1 == first_two {
            assert_eq!(plain.len(), head.len() + 12);
        }
    }
    plain.extend(opener.finish().unwrap());
    let resp = message::decode_response(&plain).unwrap();
    assert_eq!(resp.body().as_ref(), b"data: one\n\n");

    // Cut before the final chunk, or with the final chunk's flag removed: refused.
    let (msg, mut opener) = encapsulate_chunked(g.config(), b"r").unwrap();
    let (_, mut sealer) = g.decapsulate_chunked(&msg).unwrap();
    opener.push(&sealer.chunk(b"piece")).unwrap();
    assert!(matches!(opener.finish(), Err(OhttpError::Truncated(_))));
    let (msg, mut opener) = encapsulate_chunked(g.config(), b"r").unwrap();
    let (_, sealer) = g.decapsulate_chunked(&msg).unwrap();
    let mut last = sealer.finish(b"end");
    let n = last.len();
    last.truncate(n - 1);
    opener.push(&last).unwrap();
    assert!(opener.finish().is_err());
    // A chunked request whose last chunk is not marked final does not open.
    let (msg, _) = encapsulate_chunked(g.config(), &request).unwrap();
    assert!(g.decapsulate_chunked(&msg[..msg.len() - 20]).is_err());
    assert!(
        g.decapsulate(&msg).is_err(),
        "a chunked request is not a plain one"
    );
}

#[test]
fn binary_http_requests_and_responses_round_trip() {
    let req = http::Request::post("https://node.example/v2/models/m/infer?x=1")
        .header("content-type", "application/json")
        .header("payment-signature", "abc")
        .body(bytes::Bytes::from_static(b"{\"inputs\":[]}"))
        .unwrap();
    let back = message::decode_request(&message::encode_request(&req)).unwrap();
    assert_eq!(back.method(), "POST");
    assert_eq!(back.uri(), "/v2/models/m/infer?x=1");
    assert_eq!(back.headers()["payment-signature"], "abc");
    assert_eq!(back.body(), req.body());
    let mut h = http::HeaderMap::new();
    h.insert("content-type", "text/event-stream".parse().unwrap());
    let streamed = [
        StreamedResponse::head(http::StatusCode::PAYMENT_REQUIRED, &h),
        StreamedResponse::content(b"ab"),
        StreamedResponse::content(b""),
        StreamedResponse::content(b"cd"),
        StreamedResponse::end(),
    ]
    .concat();
    let resp = message::decode_response(&streamed).unwrap();
    assert_eq!(resp.status(), 402);
    assert_eq!(resp.body().as_ref(), b"abcd");
    assert!(message::decode_request(&streamed).is_err());
    assert!(message::decode_response(&streamed[..streamed.len() - 3]).is_err());
}

#[test]
fn a_streamed_response_reads_byte_by_byte_as_whole() {
    let mut h = http::HeaderMap::new();
    h.insert("content-type", "text/event-stream".parse().unwrap());
    h.append("x-two", "a".parse().unwrap());
    h.append("x-two", "b".parse().unwrap());
    let wire = [
        StreamedResponse::head(http::StatusCode::OK, &h),
        StreamedResponse::content(b"data: 1\n\n"),
        StreamedResponse::content(&vec![7u8; 20_000]),
        StreamedResponse::end(),
    ]
    .concat();
    let mut r = message::StreamedReader::default();
    let mut events = Vec::new();
    for b in &wire {
        events.extend(r.push(&[*b]).unwrap());
    }
    assert!(r.is_done());
    let mut body = Vec::new();
    let mut head = None;
    for e in events {
        match e {
            message::Streamed::Head(s, h) => head = Some((s, h)),
            message::Streamed::Data(d) => body.extend_from_slice(&d),
            message::Streamed::End => {}
        }
    }
    let (status, headers) = head.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers.get_all("x-two").iter().count(), 2);
    assert_eq!(&body[..9], b"data: 1\n\n");
    assert_eq!(body.len(), 9 + 20_000);
    // A known-length response is not a stream; bytes after the end are refused.
    assert!(
        message::StreamedReader::default()
            .push(&hex(RESPONSE))
            .is_err()
    );
    let mut r = message::StreamedReader::default();
    assert!(r.push(&[wire.clone(), vec![1]].concat()).is_err());
}
