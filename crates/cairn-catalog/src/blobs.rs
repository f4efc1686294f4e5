//! What the blob store's collector and quotas ask: usage, who holds a blob, expired drafts, nonces.

use super::*;

impl Catalog {
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
