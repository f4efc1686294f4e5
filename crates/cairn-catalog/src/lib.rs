//! The hub's catalog: repositories, releases and files, on SQLite (one file, the default) or
//! PostgreSQL (shared by several hub processes, which then act as one hub).
//!
//! Both backends run the same queries through sqlx's `Any` driver; only the DDL differs. Every
//! invariant that must hold across hub processes is enforced by the database: unique names and
//! versions, and "no file joins a published release" via a row lock on PostgreSQL and the
//! single-writer lock on SQLite.

mod schema;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::{Address, BlobId, FilePath, RepoName, Version};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

pub use cairn_hub_api::types::{FileEntry, NewRepo, Release, Repo, RepoDetail, Resolved, Search};

mod releases;

mod blobs;

/// Catalog failures, each meaning one thing to a client.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Repository names are unique.
    #[error("repository `{0}` already exists")]
    RepoExists(RepoName),
    /// No such repository.
    #[error("no repository `{0}`")]
    RepoNotFound(RepoName),
    /// No such release.
    #[error("no release {version} in `{repo}`")]
    ReleaseNotFound {
        /// Repository.
        repo: RepoName,
        /// Version.
        version: Version,
    },
    /// Published releases never change.
    #[error(
        "release {version} of `{repo}` is already published and cannot change; publish a new version"
    )]
    ReleasePublished {
        /// Repository.
        repo: RepoName,
        /// Version.
        version: Version,
    },
    /// Nothing to resolve `latest` to.
    #[error("repository `{0}` has no published release")]
    NoPublishedRelease(RepoName),
    /// Publishing needs at least one file.
    #[error("release {version} of `{repo}` has no files; upload at least one before publishing")]
    EmptyRelease {
        /// Repository.
        repo: RepoName,
        /// Version.
        version: Version,
    },
    /// No such file in the release.
    #[error("no file `{path}` in `{repo}@{version}`")]
    FileNotFound {
        /// Repository.
        repo: RepoName,
        /// Version.
        version: Version,
        /// Path.
        path: FilePath,
    },
    /// A ref without a path into a release with several files.
    #[error("`{repo}@{version}` has several files ({}); name one as `{repo}@{version}/PATH`", paths.join(", "))]
    AmbiguousFile {
        /// Repository.
        repo: RepoName,
        /// Version.
        version: Version,
        /// The candidates.
        paths: Vec<String>,
    },
    /// Input that does not fit the catalog's rules.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("catalog database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value that does not parse: the database was edited by hand or is damaged.
    #[error("catalog holds a damaged value: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, CatalogError>;

pub use cairn_sql::Backend;

/// The catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
    nonce_writes: std::sync::Arc<AtomicU64>,
}

fn corrupt(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Corrupt(e.to_string())
}

fn parse<T: FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(corrupt)
}

impl Catalog {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let (pool, backend) = cairn_sql::connect(
            url,
            cairn_sql::Open {
                what: "catalog",
                sqlite_connections: 4,
                postgres_connections: 16,
                sqlite_synchronous: "FULL",
                sqlite_extra: "PRAGMA foreign_keys = ON;",
            },
        )
        .await
        .map_err(|e| match e {
            cairn_sql::SqlError::Db(e) => CatalogError::Database(e),
            e => CatalogError::Invalid(e.to_string()),
        })?;
        cairn_sql::migrate(
            &pool,
            backend,
            cairn_sql::Migrations {
                what: "catalog",
                steps: schema::MIGRATIONS,
                table: "cairn_schema",
                lock: 7243452890,
            },
            schema::ddl,
        )
        .await?;
        Ok(Self {
            pool,
            backend,
            nonce_writes: Default::default(),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Creates a repository owned by `owner`.
    pub async fn create_repo(&self, owner: Address, new: &NewRepo, now: i64) -> Result<Repo> {
        new.validate().map_err(CatalogError::Invalid)?;
        let mut tags = new.tags.clone();
        tags.sort();
        tags.dedup();
        let tags_json = serde_json::to_string(&tags).map_err(corrupt)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO repos (name, owner, description, task, license, tags, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(new.name.as_str())
        .bind(owner.to_checksum(None))
        .bind(&new.description)
        .bind(new.task.clone())
        .bind(new.license.clone())
        .bind(&tags_json)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            return Err(CatalogError::RepoExists(new.name.clone()));
        };
        let id: i64 = row.try_get("id")?;
        for tag in &tags {
            sqlx::query("INSERT INTO repo_tags (repo_id, tag) VALUES ($1, $2)")
                .bind(id)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Repo {
            name: new.name.clone(),
            owner,
            description: new.description.clone(),
            task: new.task.clone(),
            license: new.license.clone(),
            tags,
            created_at: now,
        })
    }

    const REPO_COLUMNS: &str =
        "r.id, r.name, r.owner, r.description, r.task, r.license, r.tags, r.created_at";

    fn repo_from_row(row: &AnyRow) -> Result<(i64, Repo)> {
        let tags: String = row.try_get("tags")?;
        Ok((
            row.try_get("id")?,
            Repo {
                name: parse(&row.try_get::<String, _>("name")?)?,
                owner: parse(&row.try_get::<String, _>("owner")?)?,
                description: row.try_get("description")?,
                task: row.try_get("task")?,
                license: row.try_get("license")?,
                tags: serde_json::from_str(&tags).map_err(corrupt)?,
                created_at: row.try_get("created_at")?,
            },
        ))
    }

    async fn repo_row(&self, name: &RepoName) -> Result<(i64, Repo)> {
        let sql = format!(
            "SELECT {} FROM repos r WHERE r.name = $1",
            Self::REPO_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::RepoNotFound(name.clone()))?;
        Self::repo_from_row(&row)
    }

    /// A repository.
    pub async fn repo(&self, name: &RepoName) -> Result<Repo> {
        Ok(self.repo_row(name).await?.1)
    }

    /// A repository with its releases (newest first) and their files.
    pub async fn repo_detail(&self, name: &RepoName) -> Result<RepoDetail> {
        let (repo_id, repo) = self.repo_row(name).await?;
        let rows = sqlx::query(
            "SELECT id, major, minor, notes, created_at, published_at FROM releases
             WHERE repo_id = $1 ORDER BY major DESC, minor DESC",
        )
        .bind(repo_id)
        .fetch_all(&self.pool)
        .await?;
        let mut releases = Vec::with_capacity(rows.len());
        for row in rows {
            let release_id: i64 = row.try_get("id")?;
            releases.push(Release {
                version: version_from_row(&row)?,
                notes: row.try_get("notes")?,
                created_at: row.try_get("created_at")?,
                published_at: row.try_get("published_at")?,
                files: self.files(release_id).await?,
            });
        }
        let latest = releases
            .iter()
            .find(|r| r.published_at.is_some())
            .map(|r| r.version);
        Ok(RepoDetail {
            repo,
            latest,
            releases,
        })
    }

    async fn files(&self, release_id: i64) -> Result<Vec<FileEntry>> {
        let rows = sqlx::query(
            "SELECT path, cid, size, media_type, onnx, gguf FROM files WHERE release_id = $1 ORDER BY path",
        )
        .bind(release_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Repositories matching every given filter, by name.
    pub async fn search(&self, search: &Search) -> Result<Vec<Repo>> {
        let text = search.q.as_deref().unwrap_or("").trim().to_lowercase();
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let sql = format!(
            "SELECT {} FROM repos r
             WHERE ($1 = '' OR LOWER(r.name) LIKE $2 ESCAPE '\\' OR LOWER(r.description) LIKE $2 ESCAPE '\\')
               AND ($3 = '' OR r.task = $3)
               AND ($4 = '' OR EXISTS (SELECT 1 FROM repo_tags t WHERE t.repo_id = r.id AND t.tag = $4))
             ORDER BY r.name LIMIT $5 OFFSET $6",
            Self::REPO_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(text.clone())
            .bind(format!("%{escaped}%"))
            .bind(search.task.clone().unwrap_or_default())
            .bind(search.tag.clone().unwrap_or_default())
            .bind(i64::from(search.limit.unwrap_or(50).clamp(1, 100)))
            .bind(i64::from(search.offset.unwrap_or(0)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Self::repo_from_row(row).map(|(_, r)| r))
            .collect()
    }
}

/// The only file, or the only model file (`.onnx` or `.gguf`); otherwise the candidates.
fn pick_main_file(files: Vec<FileEntry>) -> std::result::Result<FileEntry, Vec<String>> {
    if files.len() == 1 {
        return Ok(files.into_iter().next().expect("one file"));
    }
    let mut models: Vec<_> = files
        .iter()
        .filter(|f| {
            let p = f.path.as_str();
            p.ends_with(".onnx") || p.ends_with(".gguf")
        })
        .cloned()
        .collect();
    if models.len() == 1 {
        return Ok(models.remove(0));
    }
    Err(files.iter().map(|f| f.path.to_string()).collect())
}

fn version_from_row(row: &AnyRow) -> Result<Version> {
    let part = |col| -> Result<u32> { u32::try_from(row.try_get::<i64, _>(col)?).map_err(corrupt) };
    Ok(Version {
        major: part("major")?,
        minor: part("minor")?,
    })
}

fn file_from_row(row: &AnyRow) -> Result<FileEntry> {
    let onnx: Option<String> = row.try_get("onnx")?;
    let gguf: Option<String> = row.try_get("gguf")?;
    Ok(FileEntry {
        path: parse(&row.try_get::<String, _>("path")?)?,
        cid: parse(&row.try_get::<String, _>("cid")?)?,
        size: u64::try_from(row.try_get::<i64, _>("size")?).map_err(corrupt)?,
        media_type: row.try_get("media_type")?,
        onnx: match onnx {
            Some(s) => Some(serde_json::from_str(&s).map_err(corrupt)?),
            None => None,
        },
        gguf: match gguf {
            Some(s) => Some(serde_json::from_str(&s).map_err(corrupt)?),
            None => None,
        },
    })
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    cairn_core::clock::now_secs() as i64
}

#[cfg(test)]
mod tests;
