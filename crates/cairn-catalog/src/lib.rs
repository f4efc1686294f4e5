//! The hub's catalog: repositories, releases and files, on SQLite (one file, the default) or
//! PostgreSQL (shared by several hub processes, which then act as one hub).
//!
//! Both backends run the same queries through sqlx's `Any` driver; only the DDL differs. Every
//! invariant that must hold across hub processes is enforced by the database: unique names and
//! versions, and "no file joins a published release" via a row lock on PostgreSQL and the
//! single-writer lock on SQLite.

mod schema;

use std::str::FromStr;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::{Address, BlobId, FilePath, RepoName, Version};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use cairn_hub_api::types::{FileEntry, NewRepo, Release, Repo, RepoDetail, Resolved, Search};

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

/// Which database is behind the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A single SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

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
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(CatalogError::Invalid(format!(
                "catalog URL must start with sqlite:// or postgres://, got `{url}`"
            )));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(&url).await?;
        let catalog = Self {
            pool,
            backend,
            nonce_writes: Default::default(),
        };
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Several hubs may start at once against one database: one migrates, the rest wait.
            sqlx::query("SELECT pg_advisory_xact_lock(7243452890)")
                .execute(&mut *tx)
                .await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS cairn_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM cairn_schema")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        let current = current.unwrap_or(0);
        for (version, sql) in schema::MIGRATIONS {
            if *version <= current {
                continue;
            }
            tracing::info!(version, "applying catalog migration");
            let ddl = schema::ddl(sql, self.backend);
            tx.execute(sqlx::raw_sql(&ddl)).await?;
            sqlx::query("INSERT INTO cairn_schema (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_secs())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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
            "SELECT path, cid, size, media_type, onnx FROM files WHERE release_id = $1 ORDER BY path",
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

    /// Creates a draft release, or returns the existing draft of that version (so an interrupted
    /// push can resume). Returns the release and whether it was created now.
    pub async fn create_release(
        &self,
        repo: &RepoName,
        version: Version,
        notes: &str,
        now: i64,
    ) -> Result<(Release, bool)> {
        if notes.len() > 64 << 10 {
            return Err(CatalogError::Invalid(
                "release notes are longer than 64 KiB".into(),
            ));
        }
        let (repo_id, _) = self.repo_row(repo).await?;
        let inserted = sqlx::query(
            "INSERT INTO releases (repo_id, major, minor, notes, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (repo_id, major, minor) DO NOTHING RETURNING id",
        )
        .bind(repo_id)
        .bind(i64::from(version.major))
        .bind(i64::from(version.minor))
        .bind(notes)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let (id, created) = match inserted {
            Some(row) => (row.try_get::<i64, _>("id")?, true),
            None => (self.release_id(repo_id, repo, version).await?.0, false),
        };
        let row = sqlx::query(
            "SELECT major, minor, notes, created_at, published_at FROM releases WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        let release = Release {
            version,
            notes: row.try_get("notes")?,
            created_at: row.try_get("created_at")?,
            published_at: row.try_get("published_at")?,
            files: self.files(id).await?,
        };
        if release.published_at.is_some() {
            return Err(CatalogError::ReleasePublished {
                repo: repo.clone(),
                version,
            });
        }
        Ok((release, created))
    }

    /// Fails unless `version` of `repo` exists and is still a draft that files can be added to.
    pub async fn ensure_draft(&self, repo: &RepoName, version: Version) -> Result<()> {
        let (repo_id, _) = self.repo_row(repo).await?;
        match self.release_id(repo_id, repo, version).await?.1 {
            true => Err(CatalogError::ReleasePublished {
                repo: repo.clone(),
                version,
            }),
            false => Ok(()),
        }
    }

    async fn release_id(
        &self,
        repo_id: i64,
        repo: &RepoName,
        version: Version,
    ) -> Result<(i64, bool)> {
        let row = sqlx::query(
            "SELECT id, published_at FROM releases WHERE repo_id = $1 AND major = $2 AND minor = $3",
        )
        .bind(repo_id)
        .bind(i64::from(version.major))
        .bind(i64::from(version.minor))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| CatalogError::ReleaseNotFound {
            repo: repo.clone(),
            version,
        })?;
        let published: Option<i64> = row.try_get("published_at")?;
        Ok((row.try_get("id")?, published.is_some()))
    }

    /// Adds (or replaces) a file in a draft release.
    pub async fn put_file(
        &self,
        repo: &RepoName,
        version: Version,
        file: &FileEntry,
    ) -> Result<()> {
        let (repo_id, _) = self.repo_row(repo).await?;
        let onnx = match &file.onnx {
            Some(sig) => Some(serde_json::to_string(sig).map_err(corrupt)?),
            None => None,
        };
        let size = i64::try_from(file.size).map_err(corrupt)?;
        let mut tx = self.pool.begin().await?;
        // Lock the release row so a concurrent publish (possibly from another hub) either sees
        // this file or makes this insert fail; SQLite's single writer gives the same.
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT id, published_at FROM releases WHERE repo_id = $1 AND major = $2 AND minor = $3{lock}"
        );
        let row = sqlx::query(&sql)
            .bind(repo_id)
            .bind(i64::from(version.major))
            .bind(i64::from(version.minor))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| CatalogError::ReleaseNotFound {
                repo: repo.clone(),
                version,
            })?;
        if row.try_get::<Option<i64>, _>("published_at")?.is_some() {
            return Err(CatalogError::ReleasePublished {
                repo: repo.clone(),
                version,
            });
        }
        let release_id: i64 = row.try_get("id")?;
        sqlx::query(
            "INSERT INTO files (release_id, path, cid, size, media_type, onnx) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (release_id, path) DO UPDATE
             SET cid = excluded.cid, size = excluded.size, media_type = excluded.media_type, onnx = excluded.onnx",
        )
        .bind(release_id)
        .bind(file.path.as_str())
        .bind(file.cid.to_string())
        .bind(size)
        .bind(&file.media_type)
        .bind(onnx)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishes a draft: from now on it never changes.
    pub async fn publish(&self, repo: &RepoName, version: Version, now: i64) -> Result<Release> {
        let (repo_id, _) = self.repo_row(repo).await?;
        let (release_id, published) = self.release_id(repo_id, repo, version).await?;
        if published {
            return Err(CatalogError::ReleasePublished {
                repo: repo.clone(),
                version,
            });
        }
        let updated = sqlx::query(
            "UPDATE releases SET published_at = $1 WHERE id = $2 AND published_at IS NULL
             AND EXISTS (SELECT 1 FROM files f WHERE f.release_id = $2)",
        )
        .bind(now)
        .bind(release_id)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            // Lost a race to another publisher, or nothing to publish.
            return Err(match self.release_id(repo_id, repo, version).await?.1 {
                true => CatalogError::ReleasePublished {
                    repo: repo.clone(),
                    version,
                },
                false => CatalogError::EmptyRelease {
                    repo: repo.clone(),
                    version,
                },
            });
        }
        let detail = self.repo_detail(repo).await?;
        detail
            .releases
            .into_iter()
            .find(|r| r.version == version)
            .ok_or_else(|| corrupt("published release vanished"))
    }

    /// Resolves `repo[@version][/path]` to a file of a published release. Without a version, the
    /// highest published one; without a path, the release's only file or its only `.onnx` file.
    pub async fn resolve(
        &self,
        repo: &RepoName,
        version: Option<Version>,
        path: Option<&FilePath>,
    ) -> Result<Resolved> {
        let (repo_id, _) = self.repo_row(repo).await?;
        let row = match version {
            Some(v) => sqlx::query(
                "SELECT id, major, minor FROM releases
                 WHERE repo_id = $1 AND major = $2 AND minor = $3 AND published_at IS NOT NULL",
            )
            .bind(repo_id)
            .bind(i64::from(v.major))
            .bind(i64::from(v.minor))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::ReleaseNotFound {
                repo: repo.clone(),
                version: v,
            })?,
            None => sqlx::query(
                "SELECT id, major, minor FROM releases WHERE repo_id = $1 AND published_at IS NOT NULL
                 ORDER BY major DESC, minor DESC LIMIT 1",
            )
            .bind(repo_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NoPublishedRelease(repo.clone()))?,
        };
        let version = version_from_row(&row)?;
        let files = self.files(row.try_get("id")?).await?;
        let file = match path {
            Some(p) => files.into_iter().find(|f| &f.path == p).ok_or_else(|| {
                CatalogError::FileNotFound {
                    repo: repo.clone(),
                    version,
                    path: p.clone(),
                }
            })?,
            None => pick_main_file(files).map_err(|paths| CatalogError::AmbiguousFile {
                repo: repo.clone(),
                version,
                paths,
            })?,
        };
        Ok(Resolved {
            repo: repo.clone(),
            version,
            file,
        })
    }

    /// Bytes of every file in repositories `owner` owns (drafts included): what counts against
    /// the owner's quota.
    pub async fn owner_usage(&self, owner: Address) -> Result<u64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(f.size), 0) AS BIGINT) AS used FROM files f
             JOIN releases r ON r.id = f.release_id JOIN repos p ON p.id = r.repo_id
             WHERE p.owner = $1",
        )
        .bind(owner.to_checksum(None))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("used")?).unwrap_or(0))
    }

    /// Whether `cid` is a file of some published release (only those are served to anyone).
    pub async fn blob_published(&self, cid: &BlobId) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM files f JOIN releases r ON r.id = f.release_id
             WHERE f.cid = $1 AND r.published_at IS NOT NULL LIMIT 1",
        )
        .bind(cid.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Whether a draft of a repository `owner` owns holds `cid`.
    pub async fn blob_in_drafts_of(&self, cid: &BlobId, owner: Address) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM files f JOIN releases r ON r.id = f.release_id
             JOIN repos p ON p.id = r.repo_id
             WHERE f.cid = $1 AND r.published_at IS NULL AND p.owner = $2 LIMIT 1",
        )
        .bind(cid.to_string())
        .bind(owner.to_checksum(None))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Whether some release (draft or published) holds `cid`.
    pub async fn cid_held(&self, cid: &BlobId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM files WHERE cid = $1 LIMIT 1")
            .bind(cid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Every CID some release (draft or published) holds.
    pub async fn referenced_cids(&self) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT DISTINCT cid FROM files")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("cid").map_err(Into::into))
            .collect()
    }

    /// Deletes draft releases created before `before` (Unix seconds) with their files: an
    /// abandoned upload holds no storage forever. Returns how many drafts went.
    pub async fn expire_drafts(&self, before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM files WHERE release_id IN
               (SELECT id FROM releases WHERE published_at IS NULL AND created_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let gone =
            sqlx::query("DELETE FROM releases WHERE published_at IS NULL AND created_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// Records a request nonce; false if `signer` used it before (a replay). Nonces are kept
    /// until `expires_at`, past which the signature is stale anyway.
    pub async fn use_nonce(
        &self,
        signer: Address,
        nonce: &[u8; 16],
        expires_at: i64,
    ) -> Result<bool> {
        if self
            .nonce_writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
        {
            sqlx::query("DELETE FROM request_nonces WHERE expires_at < $1")
                .bind(now_secs())
                .execute(&self.pool)
                .await?;
        }
        let nonce_hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let done = sqlx::query(
            "INSERT INTO request_nonces (signer, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(signer.to_checksum(None))
        .bind(nonce_hex)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The only file, or the only `.onnx` file; otherwise the candidates.
fn pick_main_file(files: Vec<FileEntry>) -> std::result::Result<FileEntry, Vec<String>> {
    if files.len() == 1 {
        return Ok(files.into_iter().next().expect("one file"));
    }
    let mut onnx: Vec<_> = files
        .iter()
        .filter(|f| f.path.as_str().ends_with(".onnx"))
        .cloned()
        .collect();
    if onnx.len() == 1 {
        return Ok(onnx.remove(0));
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
    Ok(FileEntry {
        path: parse(&row.try_get::<String, _>("path")?)?,
        cid: parse(&row.try_get::<String, _>("cid")?)?,
        size: u64::try_from(row.try_get::<i64, _>("size")?).map_err(corrupt)?,
        media_type: row.try_get("media_type")?,
        onnx: match onnx {
            Some(s) => Some(serde_json::from_str(&s).map_err(corrupt)?),
            None => None,
        },
    })
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;
