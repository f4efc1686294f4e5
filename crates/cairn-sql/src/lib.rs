//! SQLite or PostgreSQL through sqlx `Any`, opened one way by every store that runs on both
//! (the hub's catalog, the explorer's index): the backend is read from the URL, SQLite runs in
//! WAL with a busy timeout, and numbered migrations run once, in one transaction, under a
//! PostgreSQL advisory lock so that several processes starting at once migrate once.

use std::sync::Once;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

/// Which database is behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A single SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The URL names no supported database.
    #[error("{what} URL must start with sqlite:// or postgres://, got `{url}`")]
    Url {
        /// What the database is for.
        what: &'static str,
        /// The URL given.
        url: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// How a store opens its database.
#[derive(Debug, Clone, Copy)]
pub struct Open<'a> {
    /// What the database is for, in error messages (`catalog`, `index`).
    pub what: &'static str,
    /// Connections to a SQLite file.
    pub sqlite_connections: u32,
    /// Connections to a PostgreSQL server.
    pub postgres_connections: u32,
    /// SQLite's durability: `FULL` for what cannot be rebuilt, `NORMAL` for what can.
    pub sqlite_synchronous: &'static str,
    /// Extra statements run on each SQLite connection (e.g. `PRAGMA foreign_keys = ON;`).
    pub sqlite_extra: &'a str,
}

/// Connects to `url` (`sqlite://PATH`, created when absent, or `postgres://…`).
pub async fn connect(url: &str, o: Open<'_>) -> Result<(AnyPool, Backend), SqlError> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Backend::Postgres
    } else {
        return Err(SqlError::Url {
            what: o.what,
            url: url.to_owned(),
        });
    };
    let url = match backend {
        Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
        _ => url.to_owned(),
    };
    let pragmas = format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA busy_timeout = 10000; {}",
        o.sqlite_synchronous, o.sqlite_extra
    );
    let pool = AnyPoolOptions::new()
        .max_connections(match backend {
            Backend::Sqlite => o.sqlite_connections,
            Backend::Postgres => o.postgres_connections,
        })
        .after_connect(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    conn.execute(pragmas.as_str()).await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    Ok((pool, backend))
}

/// A store's schema history: `(version, DDL)` in order, the table that records which ran, and
/// the advisory-lock key several processes migrate under.
#[derive(Debug, Clone, Copy)]
pub struct Migrations<'a> {
    /// What the schema is for, in the log (`catalog`, `index`).
    pub what: &'static str,
    /// The versions and their DDL.
    pub steps: &'a [(i64, &'a str)],
    /// The table recording applied versions.
    pub table: &'static str,
    /// PostgreSQL advisory-lock key.
    pub lock: i64,
}

/// Brings the schema up to date: every step above the recorded version runs, in order, in one
/// transaction; `ddl` adapts a step's text to the backend.
pub async fn migrate(
    pool: &AnyPool,
    backend: Backend,
    m: Migrations<'_>,
    ddl: impl Fn(&str, Backend) -> String,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        // Several processes may start at once against one database: one migrates, the rest wait.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(m.lock)
            .execute(&mut *tx)
            .await?;
    }
    tx.execute(
        format!(
            "CREATE TABLE IF NOT EXISTS {} (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            m.table
        )
        .as_str(),
    )
    .await?;
    let current: Option<i64> = sqlx::query(&format!("SELECT MAX(version) AS v FROM {}", m.table))
        .fetch_one(&mut *tx)
        .await?
        .try_get("v")?;
    for (version, sql) in m.steps {
        if *version <= current.unwrap_or(0) {
            continue;
        }
        tracing::info!(version, "applying {} migration", m.what);
        tx.execute(sqlx::raw_sql(&ddl(sql, backend))).await?;
        sqlx::query(&format!(
            "INSERT INTO {} (version, applied_at) VALUES ($1, $2)",
            m.table
        ))
        .bind(*version)
        .bind(i64::try_from(cairn_core::clock::now_secs()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// For tests: a new, empty database on the test PostgreSQL server (`CAIRN_TEST_PG_URL`, which
/// `scripts/test.sh` sets), named after `test`; `None`, said loudly, without one, and a panic
/// when the test services are required (`CAIRN_TEST_REQUIRE_SERVICES`).
pub async fn fresh_pg_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("CAIRN_TEST_PG_URL") else {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "CAIRN_TEST_PG_URL is not set but services are required (run scripts/test.sh)"
        );
        eprintln!(
            "SKIPPED PostgreSQL half of {test}: CAIRN_TEST_PG_URL not set (scripts/test.sh sets it)"
        );
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = format!("cairn_{}_{}", test.replace('-', "_"), std::process::id());
    let pool = AnyPool::connect(&admin)
        .await
        .expect("the test PostgreSQL server answers");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        pool.execute(sql.as_str())
            .await
            .expect("the test PostgreSQL server makes a database");
    }
    let (base, _) = admin
        .rsplit_once('/')
        .expect("CAIRN_TEST_PG_URL names a database");
    Some(format!("{base}/{name}"))
}
