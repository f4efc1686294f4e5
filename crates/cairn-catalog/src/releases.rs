//! Releases and their files: drafts, uploads, publication, and labels resolved to files.

use super::*;

impl Catalog {
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

    pub(super) async fn release_id(
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
        let gguf = match &file.gguf {
            Some(meta) => Some(serde_json::to_string(meta).map_err(corrupt)?),
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
            "INSERT INTO files (release_id, path, cid, size, media_type, onnx, gguf) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (release_id, path) DO UPDATE
             SET cid = excluded.cid, size = excluded.size, media_type = excluded.media_type,
                 onnx = excluded.onnx, gguf = excluded.gguf",
        )
        .bind(release_id)
        .bind(file.path.as_str())
        .bind(file.cid.to_string())
        .bind(size)
        .bind(&file.media_type)
        .bind(onnx)
        .bind(gguf)
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
    /// highest published one; without a path, the release's only file or its only model file (`.onnx`, `.gguf`).
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
}
