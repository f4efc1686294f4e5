//! What every Cairn HTTP service has in common on the wire: the one error body.

use serde::{Deserialize, Serialize};

/// The body of every error response of every Cairn service: a stable machine code and a
/// sentence for people (what went wrong and what to do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `cid_mismatch`.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl ErrorBody {
    /// An error body from its parts.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Reads an error body from a response's bytes; `None` when they are not one (a proxy's
    /// HTML page, an empty body).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Serde forms shared by the services' wire types.
pub mod wire {
    use alloy_primitives::{Address, U256};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Addresses go out in EIP-55 checksum form, as wallets show them (any case is read back).
    pub fn checksummed<S: Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&a.to_checksum(None))
    }

    /// Token amounts as decimal strings (JSON numbers cannot hold 256 bits).
    pub mod decimal {
        use super::*;

        /// Writes `v` in decimal.
        pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&v.to_string())
        }

        /// Reads a decimal string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
            let text = String::deserialize(d)?;
            U256::from_str_radix(&text, 10).map_err(serde::de::Error::custom)
        }
    }
}

/// Routes an axum router registers that its OpenAPI document does not describe, and documented
/// routes it does not register, as `METHOD /path`; empty when the two agree. `router_source` is
/// the text of the file whose `.route("/path", get(..).post(..))` calls build the router (tests
/// pass it with `include_str!`), so a route added without its description fails a test.
pub fn route_doc_mismatches(router_source: &str, doc: &utoipa::openapi::OpenApi) -> Vec<String> {
    use std::collections::BTreeSet;
    let mut routed = BTreeSet::new();
    for (at, _) in router_source.match_indices(".route(") {
        let rest = &router_source[at + ".route(".len()..];
        let Some(open) = rest.find('"') else { continue };
        let Some(len) = rest[open + 1..].find('"') else {
            continue;
        };
        let path = rest[open + 1..open + 1 + len].replace("{*", "{");
        // The method calls up to the `)` that closes `.route(`.
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args = &rest[..end];
        for m in ["get", "post", "put", "delete", "patch", "head"] {
            let call = format!("{m}(");
            let called = args.match_indices(&call).any(|(i, _)| {
                i == 0 || !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                routed.insert(format!("{} {path}", m.to_uppercase()));
            }
        }
    }
    let mut documented = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
        ];
        for (m, op) in ops {
            if op.is_some() {
                documented.insert(format!("{m} {path}"));
            }
        }
    }
    routed.symmetric_difference(&documented).cloned().collect()
}

/// Panics, listing them, when [`route_doc_mismatches`] finds any: each server's test calls
/// this with its router's source and its OpenAPI document.
pub fn assert_routes_documented(router_source: &str, doc: &utoipa::openapi::OpenApi) {
    let m = route_doc_mismatches(router_source, doc);
    assert!(m.is_empty(), "routes and /openapi.json disagree: {m:?}");
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::{OpenApi, OpenApiBuilder};

    fn doc(routes: &[(HttpMethod, &str)]) -> OpenApi {
        let mut paths = PathsBuilder::new();
        for (m, p) in routes {
            paths = paths.path(
                *p,
                PathItem::new(m.clone(), OperationBuilder::new().build()),
            );
        }
        OpenApiBuilder::new().paths(paths.build()).build()
    }

    #[test]
    fn finds_routes_missing_from_the_document_and_the_other_way_round() {
        let source = r#"
            Router::new()
                .route("/a", get(list).post(|b: Bytes| async move { b.len() }))
                .route("/files/{*path}", put(upload).layer(limit()))
                .route_layer(x)
        "#;
        let full = doc(&[
            (HttpMethod::Get, "/a"),
            (HttpMethod::Post, "/a"),
            (HttpMethod::Put, "/files/{path}"),
        ]);
        assert_eq!(
            super::route_doc_mismatches(source, &full),
            Vec::<String>::new()
        );
        let short = doc(&[(HttpMethod::Get, "/a"), (HttpMethod::Put, "/files/{path}")]);
        assert_eq!(super::route_doc_mismatches(source, &short), vec!["POST /a"]);
        let extra = doc(&[
            (HttpMethod::Get, "/a"),
            (HttpMethod::Post, "/a"),
            (HttpMethod::Put, "/files/{path}"),
            (HttpMethod::Get, "/gone"),
        ]);
        assert_eq!(
            super::route_doc_mismatches(source, &extra),
            vec!["GET /gone"]
        );
    }
}
