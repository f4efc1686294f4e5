use super::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

fn signed(signer: &PrivateKeySigner, target: &str, body: &[u8], ts: u64) -> SignedHeaders {
    RequestToSign {
        host: "hub.example:7400",
        method: "POST",
        target,
        body_sha256: Sha256::digest(body).into(),
        timestamp: ts,
        nonce: [7; 16],
    }
    .sign(signer)
}

fn round_trip(h: &SignedHeaders) -> SignedHeaders {
    let map: HashMap<&str, String> = h.to_pairs().into_iter().collect();
    SignedHeaders::from_lookup(|k| map.get(k).map(String::as_str)).unwrap()
}

#[test]
fn sign_then_verify_through_headers() {
    let key = PrivateKeySigner::random();
    let h = round_trip(&signed(&key, "/v1/repos", b"{}", 1_000));
    assert_eq!(
        h.verify("hub.example:7400", "POST", "/v1/repos", 1_000)
            .unwrap(),
        key.address()
    );
    assert_eq!(h.body_sha256, <[u8; 32]>::from(Sha256::digest(b"{}")));
}

#[test]
fn any_change_to_the_request_is_caught() {
    let key = PrivateKeySigner::random();
    let h = signed(&key, "/v1/repos/a/releases", b"x", 1_000);
    assert!(matches!(
        h.verify("hub.example:7400", "PUT", "/v1/repos/a/releases", 1_000),
        Err(AuthError::WrongSigner { .. })
    ));
    assert!(
        h.verify("hub.example:7400", "POST", "/v1/repos/b/releases", 1_000)
            .is_err()
    );
    let mut other_body = h.clone();
    other_body.body_sha256[0] ^= 1;
    assert!(
        other_body
            .verify("hub.example:7400", "POST", "/v1/repos/a/releases", 1_000)
            .is_err()
    );
    let mut other_nonce = h.clone();
    other_nonce.nonce[3] ^= 1;
    assert!(
        other_nonce
            .verify("hub.example:7400", "POST", "/v1/repos/a/releases", 1_000)
            .is_err()
    );
    let mut forged = h.clone();
    forged.address = PrivateKeySigner::random().address();
    assert!(matches!(
        forged.verify("hub.example:7400", "POST", "/v1/repos/a/releases", 1_000),
        Err(AuthError::WrongSigner { .. })
    ));
}

#[test]
fn a_request_signed_for_another_host_is_refused() {
    let key = PrivateKeySigner::random();
    let h = signed(&key, "/v1/repos", b"{}", 1_000);
    assert!(matches!(
        h.verify("other-hub.example", "POST", "/v1/repos", 1_000),
        Err(AuthError::WrongSigner { .. })
    ));
}

#[test]
fn the_high_s_twin_is_refused() {
    let key = PrivateKeySigner::random();
    let mut h = signed(&key, "/v1/repos", b"{}", 1_000);
    h.signature = crate::sig::malleate(&h.signature);
    assert!(matches!(
        h.verify("hub.example:7400", "POST", "/v1/repos", 1_000),
        Err(AuthError::NotCanonical(_))
    ));
}

#[test]
fn urls_split_into_host_and_target() {
    let h = |u| host_and_target(u);
    assert_eq!(
        h("http://127.0.0.1:7401/v1/receipts/0x1/input?x=1"),
        Some(("127.0.0.1:7401".into(), "/v1/receipts/0x1/input?x=1".into()))
    );
    assert_eq!(
        h("https://Node.Example:443"),
        Some(("node.example".into(), "/".into()))
    );
    assert_eq!(h("http://a?q"), Some(("a".into(), "/?q".into())));
    assert_eq!(h("http://user@a/"), None);
    assert_eq!(h("ftp://a/"), None);
}

#[test]
fn the_replay_guard_accepts_a_request_once_and_bounds_each_signer() {
    let key = PrivateKeySigner::random();
    let guard = ReplayGuard::new(2, 2);
    let a = signed(&key, "/a", b"", 1_000);
    assert!(guard.check(&a, 1_000).is_ok());
    assert_eq!(guard.check(&a, 1_000), Err(AuthError::Replayed));
    let mut b = a.clone();
    b.nonce[0] ^= 1;
    assert!(guard.check(&b, 1_000).is_ok());
    // This signer's share is full of live entries: it is refused, nobody else is.
    let mut c = a.clone();
    c.nonce[1] ^= 1;
    assert_eq!(guard.check(&c, 1_000), Err(AuthError::Replayed));
    let other = signed(&PrivateKeySigner::random(), "/a", b"", 1_000);
    assert!(guard.check(&other, 1_000).is_ok());
    // The table of signers is full: a third signer waits until entries expire.
    let third = signed(&PrivateKeySigner::random(), "/a", b"", 1_000);
    assert_eq!(guard.check(&third, 1_000), Err(AuthError::Replayed));
    let later = 1_000 + MAX_CLOCK_SKEW_SECS + 2;
    assert!(guard.check(&c, later).is_ok());
    assert!(guard.check(&third, later).is_ok());
}

#[test]
fn stale_and_future_timestamps_are_refused() {
    let key = PrivateKeySigner::random();
    let h = signed(&key, "/v1/repos", b"", 10_000);
    assert!(
        h.verify(
            "hub.example:7400",
            "POST",
            "/v1/repos",
            10_000 + MAX_CLOCK_SKEW_SECS
        )
        .is_ok()
    );
    assert!(matches!(
        h.verify(
            "hub.example:7400",
            "POST",
            "/v1/repos",
            10_001 + MAX_CLOCK_SKEW_SECS
        ),
        Err(AuthError::Stale { .. })
    ));
    assert!(matches!(
        h.verify(
            "hub.example:7400",
            "POST",
            "/v1/repos",
            10_000 - MAX_CLOCK_SKEW_SECS - 1
        ),
        Err(AuthError::Stale { .. })
    ));
}

#[test]
fn malformed_headers_name_the_header() {
    let key = PrivateKeySigner::random();
    let mut map: HashMap<&str, String> = signed(&key, "/", b"", 1).to_pairs().into_iter().collect();
    map.insert(HEADER_NONCE, "zz".into());
    let err = SignedHeaders::from_lookup(|k| map.get(k).map(String::as_str)).unwrap_err();
    assert_eq!(err, AuthError::Malformed(HEADER_NONCE, "not 32 hex digits"));
    map.insert(HEADER_NONCE, "00".repeat(16));
    map.remove(HEADER_SIGNATURE);
    let err = SignedHeaders::from_lookup(|k| map.get(k).map(String::as_str)).unwrap_err();
    assert_eq!(err, AuthError::Missing(HEADER_SIGNATURE));
}

#[test]
fn message_is_stable() {
    // The signed text is part of the wire protocol: changing it breaks every client.
    let m = RequestToSign {
        host: "Hub.Example:7400",
        method: "put",
        target: "/v1/x?y=1",
        body_sha256: [0; 32],
        timestamp: 5,
        nonce: [0xab; 16],
    }
    .message();
    assert_eq!(
        m,
        format!(
            "Cairn signed request v2\nhost: hub.example:7400\nmethod: PUT\ntarget: /v1/x?y=1\nbody-sha256: {}\ntimestamp: 5\nnonce: {}",
            "0".repeat(64),
            "ab".repeat(16)
        )
    );
}
