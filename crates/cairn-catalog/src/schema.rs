//! Schema migrations, one list per backend, applied in order on start.

/// `(version, SQLite DDL, PostgreSQL DDL)`.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    r#"
CREATE TABLE repos (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    task TEXT,
    license TEXT,
    tags TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE repo_tags (
    repo_id BIGINT NOT NULL REFERENCES repos(id),
    tag TEXT NOT NULL,
    PRIMARY KEY (repo_id, tag)
);
CREATE INDEX repo_tags_tag ON repo_tags(tag);
CREATE TABLE releases (
    id INTEGER PRIMARY KEY,
    repo_id BIGINT NOT NULL REFERENCES repos(id),
    major BIGINT NOT NULL,
    minor BIGINT NOT NULL,
    notes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    published_at BIGINT,
    UNIQUE (repo_id, major, minor)
);
CREATE TABLE files (
    release_id BIGINT NOT NULL REFERENCES releases(id),
    path TEXT NOT NULL,
    cid TEXT NOT NULL,
    size BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    onnx TEXT,
    PRIMARY KEY (release_id, path)
);
CREATE INDEX files_cid ON files(cid);
CREATE TABLE request_nonces (
    signer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX request_nonces_expiry ON request_nonces(expires_at);
"#,
    r#"
CREATE TABLE repos (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    task TEXT,
    license TEXT,
    tags TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE repo_tags (
    repo_id BIGINT NOT NULL REFERENCES repos(id),
    tag TEXT NOT NULL,
    PRIMARY KEY (repo_id, tag)
);
CREATE INDEX repo_tags_tag ON repo_tags(tag);
CREATE TABLE releases (
    id BIGSERIAL PRIMARY KEY,
    repo_id BIGINT NOT NULL REFERENCES repos(id),
    major BIGINT NOT NULL,
    minor BIGINT NOT NULL,
    notes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    published_at BIGINT,
    UNIQUE (repo_id, major, minor)
);
CREATE TABLE files (
    release_id BIGINT NOT NULL REFERENCES releases(id),
    path TEXT NOT NULL,
    cid TEXT NOT NULL,
    size BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    onnx TEXT,
    PRIMARY KEY (release_id, path)
);
CREATE INDEX files_cid ON files(cid);
CREATE TABLE request_nonces (
    signer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX request_nonces_expiry ON request_nonces(expires_at);
"#,
)];
