//! The web pages: the Vite build in `web/dist`, embedded at compile time. Every path that is
//! not a file is a page of the single-page app and gets `index.html`, so each page has a
//! stable URL.

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// Pages may load only this origin's scripts, styles and data (and read the chain's RPC, and
/// talk to the chat entry): a model description that slipped past escaping still could not run
/// a script or send anything elsewhere.
fn csp(rpc: Option<&str>, entry: Option<&str>) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{}{}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        rpc.map(|r| format!(" {r}")).unwrap_or_default(),
        entry.map(|r| format!(" {r}")).unwrap_or_default()
    )
}

/// `url` as a plain http(s) URL with nothing a header or a policy could be bent by (`None`
/// for anything else).
pub fn origin_url(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return None;
    }
    let s = u.as_str().trim_end_matches('/').to_owned();
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || ":/.-_[]".contains(c))
        .then_some(s)
}

/// The pages' handler; they may read the chain at `rpc` and talk to the chat entry at `entry`.
pub fn pages(rpc: Option<&str>, entry: Option<&str>) -> axum::routing::MethodRouter {
    let csp = HeaderValue::from_str(&csp(
        rpc.and_then(origin_url).as_deref(),
        entry.and_then(origin_url).as_deref(),
    ))
    .expect("the policy is plain text");
    axum::routing::get(move |uri: Uri| serve(uri, csp.clone()))
}

fn media_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// Whether the pages were built into this binary.
pub fn available() -> bool {
    ASSETS.iter().any(|(p, _)| *p == "/index.html")
}

/// Serves a built file, or `index.html` for a page's URL.
async fn serve(uri: Uri, csp: HeaderValue) -> Response {
    let path = uri.path();
    let (path, bytes, immutable) = match ASSETS.iter().find(|(p, _)| *p == path) {
        Some((p, b)) => (*p, *b, p.starts_with("/assets/")),
        None => match ASSETS.iter().find(|(p, _)| *p == "/index.html") {
            // A missing file or API route is a JSON 404; any other path is a page.
            Some((p, b)) if !path.starts_with("/assets/") && !path.starts_with("/api/") => {
                (*p, *b, false)
            }
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(cairn_core::ErrorBody::new(
                        "not_found",
                        format!(
                            "no page or file at {}",
                            path.chars().take(200).collect::<String>()
                        ),
                    )),
                )
                    .into_response();
            }
        },
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type(path)),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    resp
}
