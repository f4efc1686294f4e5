//! HTTP towards node-chosen URLs: a node registers its endpoint, so everything a verifier or an
//! indexer fetches from it is bounded (time, bytes), follows no redirect, and, outside a local network, never
//! reaches a private, loopback or link-local address (checked for literal IPs and for every
//! address a name resolves to, at connection time, so a DNS answer cannot swap it afterwards).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use alloy_signer_local::PrivateKeySigner;
use futures::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public unicast address (not loopback, private, link-local, shared,
/// documentation, benchmarking, multicast, reserved or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: an IPv4 address inside
                || s[0] == 0x2002 // 6to4: an IPv4 address inside
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240)
}

/// Resolves names with the system resolver and keeps only public addresses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// `b` made to reach public addresses only (names checked as they resolve), through no proxy
/// from the environment (it would skip the check).
pub fn public_only(b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    b.no_proxy().dns_resolver(Arc::new(PublicOnly))
}

/// How a verifier reaches nodes and peers.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    allow_private: bool,
    max_bytes: usize,
}

impl Fetcher {
    /// A client whose requests may sit idle for `idle` (a transfer that keeps moving is never
    /// cut short, up to 10 minutes) with bodies of at most `max_bytes`; `allow_private` (a local
    /// network) lets it reach loopback and private addresses. Proxies from the environment are
    /// ignored (they would skip the address check).
    pub fn new(idle: Duration, max_bytes: usize, allow_private: bool) -> Self {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .read_timeout(idle)
            .connect_timeout(idle.min(Duration::from_secs(10)))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if !allow_private {
            b = public_only(b);
        }
        Self {
            http: b.build().expect("a plain HTTP client builds"),
            allow_private,
            max_bytes,
        }
    }

    /// The URL is `http(s)` and, unless private targets are allowed, names no private literal IP.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        check_url(url, self.allow_private)
    }

    /// Sends `req` (built on [`Fetcher::client`]) to `url` and reads at most the byte cap.
    /// `Ok((status, body))` for any HTTP answer; `Err` when nothing (or too much) came back.
    pub async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        self.send_at_most(url, req, self.max_bytes).await
    }

    /// [`Fetcher::send`] reading at most `max_bytes` (and never more than the byte cap).
    pub async fn send_at_most(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        max_bytes: usize,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        let max_bytes = max_bytes.min(self.max_bytes);
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{url}: {}", with_causes(&e)))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(format!(
                "{url}: the answer is over the {max_bytes} byte limit"
            ));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("{url}: {e}"))?;
            if body.len() + chunk.len() > max_bytes {
                return Err(format!(
                    "{url}: the answer is over the {max_bytes} byte limit"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// A signed GET of `url` (the node checks the signer is an active verifier).
    pub async fn signed_get(
        &self,
        key: &PrivateKeySigner,
        url: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        self.signed_get_as(key, url, "*/*").await
    }

    /// [`Fetcher::signed_get`] of a body that is at most `max_bytes` when its sender is honest
    /// (a payload whose size a protocol bounds).
    pub async fn signed_get_at_most(
        &self,
        key: &PrivateKeySigner,
        url: &str,
        max_bytes: usize,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        let req = self.signed_get_request(key, url, "*/*")?;
        self.send_at_most(url, req, max_bytes).await
    }

    /// [`Fetcher::signed_get`] asking for the media types in `accept`.
    pub async fn signed_get_as(
        &self,
        key: &PrivateKeySigner,
        url: &str,
        accept: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        let req = self.signed_get_request(key, url, accept)?;
        self.send(url, req).await
    }

    fn signed_get_request(
        &self,
        key: &PrivateKeySigner,
        url: &str,
        accept: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let parsed = self.check_url(url)?;
        let mut req = self
            .http
            .get(parsed)
            .header(reqwest::header::ACCEPT, accept);
        if let Some(h) = cairn_core::auth::sign_url(key, "GET", url, b"") {
            for (k, v) in h.to_pairs() {
                req = req.header(k, v);
            }
        }
        Ok(req)
    }

    /// A signed POST of `body` (JSON) to `url`.
    pub async fn signed_post(
        &self,
        key: &PrivateKeySigner,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
        let parsed = self.check_url(url)?;
        let mut req = self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(h) = cairn_core::auth::sign_url(key, "POST", url, &body) {
            for (k, v) in h.to_pairs() {
                req = req.header(k, v);
            }
        }
        self.send(url, req.body(body)).await
    }

    /// The underlying client (for plain requests to the hub).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }
}

/// An error with its causes, `outer: inner: …`, so a failure says why a connection failed.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Whether `url` is registered as a public endpoint: anything but a literal private, loopback
/// or reserved IP, or `localhost`. Names are not resolved: inside a cloud network a public name
/// often resolves to a private address, and that must not open the network to whoever chooses
/// an endpoint. A participant registered at a public endpoint reaches the others at public
/// addresses only; one registered on a local network (a devnet) reaches them wherever they are.
pub fn registered_publicly(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return true;
    };
    match u.host() {
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => !d.eq_ignore_ascii_case("localhost"),
        None => true,
    }
}

/// Checks `url` is `http(s)` without user info, and, unless `allow_private`, that a literal IP
/// host is public (names are checked when resolved).
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("`{url}` is not an http(s) URL"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("`{url}` carries user info"));
    }
    let ip = match u.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        Some(url::Host::Domain(_)) => None,
        None => return Err(format!("`{url}` has no host")),
    };
    if !allow_private && ip.is_some_and(|ip| !is_public(ip)) {
        return Err(format!(
            "`{url}` is a private, loopback or reserved address; nodes must be reachable publicly"
        ));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_targets_are_refused() {
        for bad in [
            "http://127.0.0.1:7401/v1",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "file:///etc/passwd",
            "http://user:pw@example.com/",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        for good in ["http://93.184.215.14/", "https://node.example.com:8443/x"] {
            assert!(check_url(good, false).is_ok(), "{good}");
        }
        assert!(check_url("http://127.0.0.1:7401/", true).is_ok());
    }

    /// A local server answering every request with `status`, `headers` and `body`; counts hits.
    async fn serve(
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let (headers, body) = (headers.clone(), body.clone());
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut r = axum::response::Response::new(axum::body::Body::from(body));
                *r.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    r.headers_mut().insert(k, v.parse().unwrap());
                }
                r
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, hits)
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_answers_are_capped() {
        let key = PrivateKeySigner::random();
        let f = Fetcher::new(Duration::from_secs(5), 1 << 10, true);
        // A node redirecting the verifier elsewhere gets its redirect back, nothing more.
        let (inner, inner_hits) = serve(200, vec![], b"secret".to_vec()).await;
        let (outer, _) = serve(302, vec![("location", format!("{inner}/x"))], vec![]).await;
        let (status, _) = f.signed_get(&key, &format!("{outer}/v1/x")).await.unwrap();
        assert_eq!(status.as_u16(), 302);
        assert_eq!(inner_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // An answer over the cap is refused, whether or not it says its length up front.
        let (big, _) = serve(200, vec![], vec![7; 4096]).await;
        let err = f.signed_get(&key, &format!("{big}/y")).await.unwrap_err();
        assert!(err.contains("byte limit"), "{err}");
        let (ok, _) = serve(200, vec![], vec![7; 512]).await;
        assert_eq!(
            f.signed_get(&key, &format!("{ok}/z"))
                .await
                .unwrap()
                .1
                .len(),
            512
        );
        // A payload the protocol bounds is read no further than its bound.
        let err = f
            .signed_get_at_most(&key, &format!("{ok}/z"), 256)
            .await
            .unwrap_err();
        assert!(err.contains("over the 256 byte limit"), "{err}");
        // Outside a local network, a loopback node is not reached at all.
        let strict = Fetcher::new(Duration::from_secs(5), 1 << 10, false);
        assert!(strict.signed_get(&key, &format!("{ok}/z")).await.is_err());
    }
}
