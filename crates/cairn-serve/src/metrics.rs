//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format: every service
//! counts its requests by route template, method and status, with their latency; each adds
//! families of its own to the [`Registry`] before it starts.
//!
//! `/metrics` is unauthenticated, so it stays cheap and says nothing private: labels are route
//! templates (never raw paths), known methods, statuses and values a service bounds itself
//! ([`BoundedLabels`]); no payer, key or payload appears in them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// The OpenMetrics text content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, seconds: 100 µs (a receipt lookup) to a minute (a long generation).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// A service's metrics: its registry and the HTTP families every service has.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Metrics named `<prefix>_…` (`cairn_node`, `cairn_hub`, …).
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until its head is sent; a stream's body is not timed), by route template, method and status",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
        }
    }

    /// The registry, to add a service's own families before it starts.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text a scrape gets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The `/metrics` answer.
    pub fn response(&self) -> Response {
        let mut resp = self.render().into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        resp
    }
}

/// A method as a label: the standard ones by name, anything else one value (a client choosing
/// methods must not choose how many series there are).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The status recorded for a request whose client left before it was answered (nginx's
/// "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// The middleware counting and timing requests. Add it with `Router::layer` (so the matched
/// route template is known):
/// `router.layer(axum::middleware::from_fn_with_state(metrics, cairn_serve::metrics::track))`.
/// A request whose client leaves first is recorded too, as [`CLIENT_CLOSED`], with the time it
/// had taken: slow requests that were given up on must not vanish from the latency.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let mut seen = Seen {
        m: &m,
        route: req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| p.as_str())
            .to_owned(),
        method: method_label(req.method()),
        start: Instant::now(),
        status: CLIENT_CLOSED,
    };
    let resp = next.run(req).await;
    seen.status = resp.status().as_u16();
    resp
}

/// One request, recorded when it is dropped: answered, or abandoned by its client.
struct Seen<'a> {
    m: &'a Metrics,
    route: String,
    method: &'static str,
    start: Instant,
    status: u16,
}

impl Drop for Seen<'_> {
    fn drop(&mut self) {
        // By status too: under overload the answered requests' latency must not be hidden
        // among held refusals'.
        let labels = RequestLabels {
            route: std::mem::take(&mut self.route),
            method: self.method,
            status: self.status,
        };
        self.m
            .latency
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
        self.m.requests.get_or_create(&labels).inc();
    }
}

/// `router` with `GET /metrics` (the registry as it stands) and every request counted: for a
/// service whose metrics need nothing read at scrape time.
pub fn serve(router: axum::Router, m: Arc<Metrics>) -> axum::Router {
    let scrape = m.clone();
    router
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = scrape.clone();
                async move { m.response() }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(m, track))
}

/// A value a scrape reads from a store, recounted at most every `every`: an unauthenticated
/// client scraping in a loop must not make a service recount its whole store each time.
/// Concurrent scrapes wait for one recount.
pub struct Recounted<T> {
    every: std::time::Duration,
    last: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Recounted<T> {
    /// Recounted at most every `every`.
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The last count if it is recent, else `count()`'s (kept when it succeeds).
    pub async fn get<E, F>(&self, count: impl FnOnce() -> F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, v)) = last.as_ref()
            && at.elapsed() < self.every
        {
            return Ok(v.clone());
        }
        let v = count().await?;
        *last = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

/// Label values a caller can influence (a model's CID), kept to a fixed number of distinct
/// values: past `max`, new ones are counted as `other`, so series stay bounded.
#[derive(Debug)]
pub struct BoundedLabels {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl BoundedLabels {
    /// At most `max` distinct values.
    pub fn new(max: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// `value` if it is already in, or there is room for it; else `other`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_not_by_path() {
        let m = Arc::new(Metrics::new("test"));
        let app = Router::new()
            .route("/items/{id}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(m.clone(), track));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Raw HTTP: three paths under one template, an unknown path, an odd method.
        for (method, path) in [
            ("GET", "/items/1"),
            ("GET", "/items/2"),
            ("GET", "/items/3"),
            ("GET", "/nowhere"),
            ("BREW", "/items/1"),
        ] {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
        }
        let text = m.render();
        assert!(
            text.contains(
                r#"test_http_requests_total{route="/items/{id}",method="GET",status="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"test_http_requests_total{route="unmatched",method="GET",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"method="other",status="405"} 1"#), "{text}");
        assert!(
            !text.contains("/items/1"),
            "a raw path became a label: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn a_request_its_client_left_is_recorded_as_client_closed() {
        let m = Arc::new(Metrics::new("test"));
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(m.clone(), track));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let want = r#"test_http_requests_total{route="/slow",method="GET",status="499"} 1"#;
        for _ in 0..50 {
            if m.render().contains(want) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{}", m.render());
    }

    #[tokio::test]
    async fn a_recount_happens_at_most_once_per_period() {
        let r = Recounted::new(std::time::Duration::from_secs(60));
        let mut counted = 0;
        for _ in 0..3 {
            let v: Result<u32, ()> = r
                .get(|| {
                    counted += 1;
                    async { Ok(7) }
                })
                .await;
            assert_eq!(v, Ok(7));
        }
        assert_eq!(counted, 1);
    }

    #[test]
    fn caller_chosen_labels_stay_bounded() {
        let b = BoundedLabels::new(2);
        assert_eq!(b.label("a"), "a");
        assert_eq!(b.label("b"), "b");
        assert_eq!(b.label("c"), "other");
        assert_eq!(b.label("a"), "a");
    }
}
