//! Schema migrations, applied in order on start. One DDL text serves both backends; the token
//! `AUTO_ID` becomes each one's auto-increment primary key.

/// `(version, DDL)`.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE repos (
    id AUTO_ID,
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
    id AUTO_ID,
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
    ),
    // GGUF language models: their metadata as read on upload, beside ONNX signatures.
    (2, "ALTER TABLE files ADD COLUMN gguf TEXT;"),
];

/// The DDL for one backend.
pub(crate) fn ddl(sql: &str, backend: cairn_sql::Backend) -> String {
    let id = match backend {
        cairn_sql::Backend::Sqlite => "INTEGER PRIMARY KEY",
        cairn_sql::Backend::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    sql.replace("AUTO_ID", id)
}
