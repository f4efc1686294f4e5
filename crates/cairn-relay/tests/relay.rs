//! The relay against a gateway that records what reaches it, over real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use cairn_ohttp::{GatewayKey, message};
use cairn_relay::{Gateway, Relay, RelayConfig, client::PrivateRoute};

/// What the gateway saw of each request: its headers and the address it came from.
type Seen = Arc<Mutex<Vec<(HeaderMap, SocketAddr)>>>;

/// A gateway (the real decapsulation) that answers every request with its own path and
/// records what reached it.
async fn recording_gateway() -> (String, Seen, GatewayKey) {
    let key = GatewayKey::derive(1, &[9; 32]);
    let seen: Seen = Default::default();
    let (k, s) = (key.clone(), seen.clone());
    let app = axum::Router::new().route(
        cairn_ohttp::GATEWAY_PATH,
        axum::routing::get({
            let k = k.clone();
            move || async move {
                cairn_ohttp::KeyConfig::encode_list(&[k.config()])
                    .into_response_with(cairn_ohttp::KEYS_TYPE)
            }
        })
        .post(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
                  headers: HeaderMap,
                  body: axum::body::Bytes| async move {
                let chunked = headers["content-type"] == cairn_ohttp::CHUNKED_REQUEST_TYPE;
                s.lock().unwrap().push((headers, peer));
                // The answer names the inner request's path and header names.
                let answer = |req: axum::http::Request<bytes::Bytes>| {
                    if req.uri().path() == "/echo-date" {
                        let date = req.headers()["date"].to_str().unwrap();
                        return format!("/echo-date {date}").into_bytes();
                    }
                    let mut names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
                    names.sort();
                    format!("{} {}", req.uri().path(), names.join(",")).into_bytes()
                };
                if chunked {
                    let (plain, mut sealer) = k.decapsulate_chunked(&body).unwrap();
                    let content = answer(message::decode_request(&plain).unwrap());
                    let mut out = sealer.chunk(&message::StreamedResponse::head(
                        axum::http::StatusCode::OK,
                        &HeaderMap::new(),
                    ));
                    out.extend(sealer.chunk(&message::StreamedResponse::content(&content)));
                    out.extend(sealer.finish(&message::StreamedResponse::end()));
                    return out.into_response_with(cairn_ohttp::CHUNKED_RESPONSE_TYPE);
                }
                let (plain, sealer) = k.decapsulate(&body).unwrap();
                let content = answer(message::decode_request(&plain).unwrap());
                let answer = message::encode_response(
                    axum::http::StatusCode::OK,
                    &HeaderMap::new(),
                    &content,
                );
                sealer
                    .seal(&answer)
                    .into_response_with(cairn_ohttp::RESPONSE_TYPE)
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}{}",
        listener.local_addr().unwrap(),
        cairn_ohttp::GATEWAY_PATH
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    (url, seen, key)
}

trait IntoResponseWith {
    fn into_response_with(self, media: &'static str) -> axum::response::Response;
}

impl IntoResponseWith for Vec<u8> {
    fn into_response_with(self, media: &'static str) -> axum::response::Response {
        use axum::response::IntoResponse;
        ([(axum::http::header::CONTENT_TYPE, media)], self).into_response()
    }
}

async fn relay(gateways: Vec<Gateway>, max_per_client: usize) -> String {
    relay_with(RelayConfig {
        gateways,
        max_body_bytes: 4096,
        max_per_client,
        ..Default::default()
    })
    .await
}

/// A `GET /x` sealed to `config`.
fn sealed_get(config: &cairn_ohttp::KeyConfig) -> Vec<u8> {
    let req = axum::http::Request::get("/x")
        .body(bytes::Bytes::new())
        .unwrap();
    cairn_ohttp::encapsulate(config, &message::encode_request(&req))
        .unwrap()
        .0
}

/// A relay forwarding to the gateway at `gw` as `g`.
async fn relay_named_g(gw: String) -> String {
    relay(
        vec![Gateway {
            name: "g".into(),
            url: gw,
            public_only: false,
        }],
        16,
    )
    .await
}

async fn relay_with(config: RelayConfig) -> String {
    let relay = Relay::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cairn_relay::serve(listener, relay, std::future::pending()));
    url
}

#[tokio::test]
async fn the_gateway_gets_the_sealed_body_and_nothing_that_names_the_client() {
    let (gw, seen, _) = recording_gateway().await;
    let relay = relay_named_g(gw).await;
    let route = PrivateRoute::open(&relay, "g").await.unwrap();
    let req = axum::http::Request::get("/v2/health/live")
        .header("x-forwarded-for", "203.0.113.7")
        .header("cookie", "session=secret")
        .body(bytes::Bytes::new())
        .unwrap();
    let resp = route.send(req).await.unwrap();
    // The library sends what it is given: the caller chose these headers.
    assert_eq!(
        resp.body().as_ref(),
        b"/v2/health/live cookie,x-forwarded-for"
    );
    // Headers the client sends to the relay itself do not reach the gateway either.
    let http = reqwest::Client::new();
    let sealed = sealed_get(route.key_config());
    let r = http
        .post(format!("{relay}/gateways/g"))
        .header("content-type", cairn_ohttp::REQUEST_TYPE)
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .header("user-agent", "client-fingerprint/1.0")
        .header("cookie", "session=secret")
        .body(sealed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for (headers, peer) in seen.iter() {
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["accept", "content-length", "content-type", "host"],
            "{headers:?}"
        );
        assert_eq!(headers["accept"], "*/*");
        assert!(peer.ip().is_loopback());
    }
}

#[tokio::test]
async fn the_relay_forwards_only_to_its_gateways_only_ohttp_and_only_so_much() {
    let (gw, seen, key) = recording_gateway().await;
    let relay = relay_named_g(gw).await;
    let http = reqwest::Client::new();
    let post = |path: &str, media: &str, body: Vec<u8>| {
        http.post(format!("{relay}{path}"))
            .header("content-type", media)
            .body(body)
            .send()
    };
    let (sealed, _) = cairn_ohttp::encapsulate(key.config(), b"x").unwrap();
    let r = post("/gateways/other", cairn_ohttp::REQUEST_TYPE, sealed.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unknown_gateway");
    let r = post("/gateways/g", "application/json", sealed)
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = post("/gateways/g", cairn_ohttp::REQUEST_TYPE, vec![0; 5000])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Nothing of these reached the gateway.
    assert!(seen.lock().unwrap().is_empty());
    // Listed by name only: where the relay reaches a gateway is not told.
    let r = http.get(format!("{relay}/gateways")).send().await.unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list, serde_json::json!([{ "name": "g" }]));
}

#[tokio::test]
async fn a_gateway_that_is_down_is_a_clear_502() {
    let relay = relay(
        vec![Gateway {
            name: "gone".into(),
            url: "http://127.0.0.1:9/.well-known/ohttp-gateway".into(),
            public_only: false,
        }],
        16,
    )
    .await;
    let e = PrivateRoute::open(&relay, "gone").await.err().unwrap();
    assert!(e.to_string().contains("gateway_unavailable"), "{e}");
}

#[tokio::test]
async fn the_local_proxy_seals_only_what_a_call_needs() {
    let (gw, _, _) = recording_gateway().await;
    let relay = relay_named_g(gw).await;
    let route = PrivateRoute::open(&relay, "g").await.unwrap();
    let (addr, _task) = route.local_proxy(1 << 20).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v2/models/m/infer"))
        .header("content-type", "application/json")
        .header("payment-signature", "abc")
        .header("cairn-receipt-seal", "batch")
        .header("user-agent", "fingerprint/1.0")
        .header("authorization", "Bearer stable-token")
        .header("cookie", "session=1")
        .header("x-stainless-os", "Linux")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "/v2/models/m/infer accept,cairn-receipt-seal,content-type,date,payment-signature"
    );
    // The date is the proxy's own (whatever the client's clock says: it would tell it apart).
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/echo-date"))
        .header("date", "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .await
        .unwrap();
    let date = r.text().await.unwrap();
    let sent = httpdate::parse_http_date(date.trim_start_matches("/echo-date ")).unwrap();
    let off = std::time::SystemTime::now()
        .duration_since(sent)
        .unwrap_or_default();
    assert!(off < std::time::Duration::from_secs(60), "{date}");
}

#[tokio::test]
async fn a_request_that_trickles_in_is_cut_off_and_holds_nothing() {
    let (gw, seen, _) = recording_gateway().await;
    let relay = relay_with(RelayConfig {
        gateways: vec![Gateway {
            name: "g".into(),
            url: gw,
            public_only: false,
        }],
        body_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let slow = futures::stream::unfold(0, |i| async move {
        if i == 3 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Some((Ok::<_, std::io::Error>(vec![0u8; 10]), i + 1))
    });
    let r = reqwest::Client::new()
        .post(format!("{relay}/gateways/g"))
        .header("content-type", cairn_ohttp::REQUEST_TYPE)
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "request_timeout");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_client_sending_faster_than_its_rate_is_told_to_wait() {
    let (gw, _, key) = recording_gateway().await;
    let relay = relay_with(RelayConfig {
        gateways: vec![Gateway {
            name: "g".into(),
            url: gw,
            public_only: false,
        }],
        max_rate_per_client: 1.0,
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..8 {
        let sealed = sealed_get(key.config());
        let r = http
            .post(format!("{relay}/gateways/g"))
            .header("content-type", cairn_ohttp::REQUEST_TYPE)
            .body(sealed)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        statuses.push(r.status().as_u16());
    }
    // A burst of twice the rate goes through, then only what the rate refilled meanwhile.
    let refilled = start.elapsed().as_secs_f64().ceil() as usize;
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(passed >= 2 && passed <= 2 + refilled, "{statuses:?}");
    assert_eq!(passed + statuses.iter().filter(|s| **s == 429).count(), 8);
}

/// Whatever answers at a gateway's URL that is not a gateway (an internal page, a metadata
/// service a registration pointed at) is not passed on through the relay's origin; a gateway
/// that must be reached at public addresses only is not reached without the client for it.
#[tokio::test]
async fn only_a_gateway_answer_is_passed_on() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            (
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<h1>internal secret</h1>",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inside = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let relay = relay(
        vec![
            Gateway {
                name: "inside".into(),
                url: inside.clone(),
                public_only: false,
            },
            Gateway {
                name: "registered".into(),
                url: inside,
                public_only: true,
            },
        ],
        16,
    )
    .await;
    let http = reqwest::Client::new();
    for name in ["inside", "registered"] {
        let keys = http
            .get(format!("{relay}/gateways/{name}"))
            .send()
            .await
            .unwrap();
        let post = http
            .post(format!("{relay}/gateways/{name}"))
            .header("content-type", cairn_ohttp::REQUEST_TYPE)
            .body("x")
            .send()
            .await
            .unwrap();
        for r in [keys, post] {
            assert_eq!(r.status(), 502, "{name}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("secret"), "{name}: {body}");
        }
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "only the plain gateway was reached"
    );
}

/// A client's requests hold at most its share of the relay's memory for sealed requests: a
/// client that keeps many slow uploads open is refused the next (429), and the share comes
/// back once they have gone on.
#[tokio::test]
async fn one_client_holds_no_more_than_its_share_of_request_memory() {
    let (gw, seen, key) = recording_gateway().await;
    let relay = relay_with(RelayConfig {
        gateways: vec![Gateway {
            name: "g".into(),
            url: gw,
            public_only: false,
        }],
        max_body_bytes: 4096,
        body_budget_per_client_bytes: 8192,
        body_timeout: std::time::Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    // Two uploads of 4 KiB sent at once, then held open: the client's whole share.
    let hold = || {
        let relay = relay.clone();
        tokio::spawn(async move {
            let body = futures::stream::unfold(0, |i| async move {
                if i == 1 {
                    futures::future::pending::<()>().await;
                }
                Some((Ok::<_, std::io::Error>(vec![0u8; 4096]), i + 1))
            });
            reqwest::Client::new()
                .post(format!("{relay}/gateways/g"))
                .header("content-type", cairn_ohttp::REQUEST_TYPE)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let a = hold();
    let b = hold();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let post = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(format!("{relay}/gateways/g"))
            .header("content-type", cairn_ohttp::REQUEST_TYPE)
            .body(body)
            .send()
    };
    let r = post(sealed_get(key.config())).await.unwrap();
    assert_eq!(r.status(), 429);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e["message"].as_str().unwrap().contains("memory one client"),
        "{e}"
    );
    // The held uploads time out; the share is back.
    assert_eq!(a.await.unwrap().unwrap(), 408);
    assert_eq!(b.await.unwrap().unwrap(), 408);
    let r = post(sealed_get(key.config())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A gateway that trickles its answer holds the client's slot no longer than the answer
/// deadline: the answer is cut off there and the slot comes back.
#[tokio::test]
async fn a_gateway_trickling_its_answer_is_cut_off_at_the_deadline() {
    let relay = relay_to_streaming_gateway(|| {
        axum::body::Body::from_stream(futures::stream::unfold((), |()| async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(vec![0u8; 1]), ()))
        }))
    })
    .await;
    let send = || post_sealed(&relay);
    let start = std::time::Instant::now();
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = 0;
    let mut cut = false;
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(_) => {
                cut = true;
                break;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "never cut off"
        );
    }
    assert!(cut && got > 0, "{got} bytes, cut: {cut}");
    // The one slot this client has is free again.
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A client that stops reading a long answer holds its slot no longer than the answer
/// deadline either: the relay drops the answer there, whatever the client does.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_at_the_deadline() {
    let relay = relay_to_streaming_gateway(|| {
        axum::body::Body::from_stream(futures::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(vec![7u8; 64 << 10])
        }))
    })
    .await;
    let send = || post_sealed(&relay);
    // The answer's head is read, its body never.
    let unread = send().await.unwrap();
    assert_eq!(unread.status(), 200);
    let r = send().await.unwrap();
    assert_eq!(r.status(), 429, "the slot is held while the answer runs");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = send().await.unwrap();
    assert_eq!(r.status(), 200, "the slot was never given back");
    drop(unread);
}

/// A relay (one slot per client, answers cut off at 700 ms) forwarding `g` to a gateway that
/// answers every request with `answer()` as a sealed answer's body.
async fn relay_to_streaming_gateway(answer: fn() -> axum::body::Body) -> String {
    let app = axum::Router::new().route(
        cairn_ohttp::GATEWAY_PATH,
        axum::routing::post(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, cairn_ohttp::RESPONSE_TYPE)],
                answer(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = format!(
        "http://{}{}",
        listener.local_addr().unwrap(),
        cairn_ohttp::GATEWAY_PATH
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    relay_with(RelayConfig {
        gateways: vec![Gateway {
            name: "g".into(),
            url: gw,
            public_only: false,
        }],
        max_per_client: 1,
        answer_timeout: std::time::Duration::from_millis(700),
        ..Default::default()
    })
    .await
}

/// A 100-byte sealed request to `relay`'s gateway `g`.
async fn post_sealed(relay: &str) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{relay}/gateways/g"))
        .header("content-type", cairn_ohttp::REQUEST_TYPE)
        .body(vec![0u8; 100])
        .send()
        .await
}
