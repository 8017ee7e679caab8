//! The worker's side of the database: tokio-postgres calls to the extension's SQL functions.
//! The worker never writes the catalog itself: entries go in through `causal.import`, which
//! validates them like any bundle, and status goes through `causal._sync_report`.

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};

use crate::session::ImportOutcome;
use crate::wire::WireHeader;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the node identity is missing or unreadable (the worker needs to read causal.identity_keys: connect as a superuser or the extension's owner)")]
    NoNodeKey,
    #[error("unexpected answer from {0}")]
    Unexpected(&'static str),
}

/// A database error with the server's SQLSTATE, message and detail (tokio-postgres prints
/// only "db error" for those).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut text = format!("{} ({})", d.message(), d.code().code());
            if let Some(detail) = d.detail() {
                text.push_str(&format!(": {detail}"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// A group as the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRow {
    pub group_id: String,
    pub hash_algorithm: String,
    pub frontier: Vec<String>,
}

/// One connection to the database.
pub struct Db {
    client: Client,
    /// The statements this connection has prepared, by text: each is parsed and planned by
    /// the server once, not at every call. A call that sends only text makes the server parse
    /// and analyse it again, in a round trip of its own: that was 10-20% of the CPU of each
    /// of the worker's sealing, decoding and placing backends under a steady load of
    /// single-row commits (docs/BENCHMARKS.md).
    prepared: std::sync::Mutex<std::collections::HashMap<&'static str, Statement>>,
}

/// Where `LISTEN` messages go: a bounded channel, and a count of the messages that found it
/// full and were dropped. The worker resynchronizes everything a message could have signalled
/// when that count moves, so a dropped message delays work but loses none.
#[derive(Clone)]
pub struct Notifications {
    pub tx: mpsc::Sender<String>,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Connects; the connection is driven by a spawned task. With `notifications`, messages from
/// `LISTEN` arrive there.
pub async fn connect(conninfo: &str, notifications: Option<Notifications>) -> Result<Db, DbError> {
    let (client, mut connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures::StreamExt;
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(to) = &notifications {
                        if to.tx.try_send(n.payload().to_string()).is_err() {
                            to.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("database connection closed: {e}");
                    break;
                }
            }
        }
    });
    Ok(Db { client, prepared: std::sync::Mutex::default() })
}

/// A group row, read without panicking on a column of an unexpected type (a worker binary
/// may meet an extension of another version).
fn group_row(r: &tokio_postgres::Row) -> Result<GroupRow, DbError> {
    Ok(GroupRow { group_id: r.try_get(0)?, hash_algorithm: r.try_get(1)?, frontier: r.try_get(2)? })
}

fn parse_json(text: &str) -> Option<Value> {
    causal_core::json::parse(text).ok()
}

impl Db {
    /// The statements prepared so far (a panic elsewhere while one was held leaves them valid).
    fn statements(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<&'static str, Statement>> {
        self.prepared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `sql` prepared on this connection, once.
    async fn statement(&self, sql: &'static str) -> Result<Statement, DbError> {
        if let Some(s) = self.statements().get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements().insert(sql, s.clone());
        Ok(s)
    }

    /// Runs `sql`, prepared once, and returns its rows. After an error the statement is
    /// prepared again at its next call: one the server no longer knows or can no longer run
    /// as planned (the extension was updated, say) is not tried again and again.
    async fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await.map_err(|e| self.forget(sql, e))
    }

    /// [`Db::query`] for a statement that returns exactly one row.
    async fn query_one(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, DbError> {
        let statement = self.statement(sql).await?;
        self.client.query_one(&statement, params).await.map_err(|e| self.forget(sql, e))
    }

    /// [`Db::query`] for a statement that returns at most one row.
    async fn query_opt(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, DbError> {
        let statement = self.statement(sql).await?;
        self.client.query_opt(&statement, params).await.map_err(|e| self.forget(sql, e))
    }

    fn forget(&self, sql: &'static str, e: tokio_postgres::Error) -> DbError {
        self.statements().remove(sql);
        DbError::Postgres(e)
    }

    /// Whether `CREATE EXTENSION pg_causal` has run in this database.
    pub async fn extension_ready(&self) -> Result<bool, DbError> {
        Ok(self.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'pg_causal'", &[]).await?.is_some())
    }

    pub async fn listen(&self) -> Result<(), DbError> {
        self.client.batch_execute("LISTEN causal_sync").await?;
        Ok(())
    }

    /// The node identity's secret key (the libp2p identity).
    pub async fn node_secret(&self) -> Result<Vec<u8>, DbError> {
        let row = self
            .query_opt("SELECT secret_key FROM causal.identity_keys WHERE is_node", &[])
            .await
            .map_err(|_| DbError::NoNodeKey)?
            .ok_or(DbError::NoNodeKey)?;
        row.try_get::<_, Vec<u8>>(0).map_err(|_| DbError::NoNodeKey)
    }

    pub async fn groups(&self) -> Result<Vec<GroupRow>, DbError> {
        let rows = self
            .query(
                "SELECT group_id, hash_algorithm, causal.frontier(group_id) FROM causal.group_defs ORDER BY group_id",
                &[],
            )
            .await?;
        rows.iter().map(group_row).collect()
    }

    pub async fn group(&self, group_id: &str) -> Result<Option<GroupRow>, DbError> {
        let row = self
            .query_opt(
                "SELECT group_id, hash_algorithm, causal.frontier(group_id) FROM causal.group_defs WHERE group_id = $1",
                &[&group_id],
            )
            .await?;
        row.as_ref().map(group_row).transpose()
    }

    /// Groups asked for with `causal.join_group` that are not here yet.
    pub async fn wanted_groups(&self) -> Result<Vec<String>, DbError> {
        let rows = self
            .query(
                "SELECT w.group_id FROM causal.wanted_groups w \
                 WHERE NOT EXISTS (SELECT 1 FROM causal.group_defs g WHERE g.group_id = w.group_id)",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    pub async fn peer_addresses(&self) -> Result<Vec<String>, DbError> {
        let rows = self.query("SELECT address FROM causal.peer_addresses ORDER BY address", &[]).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    /// Serves a header request (`causal._sync_headers`).
    pub async fn read_headers(
        &self,
        group: &str,
        start: &[String],
        limits: &[String],
        max: u32,
        with_payloads: bool,
        forward: bool,
    ) -> Result<(Vec<WireHeader>, bool, Option<Vec<(String, Value)>>), DbError> {
        let max = i32::try_from(max).unwrap_or(i32::MAX);
        let rows = self
            .query(
                "SELECT kind, hash, body FROM causal._sync_headers($1, $2, $3, $4, $5, $6)",
                &[&group, &start, &limits, &max, &with_payloads, &forward],
            )
            .await?;
        let (mut headers, mut payloads, mut complete) = (Vec::new(), Vec::new(), false);
        for r in rows {
            let kind: String = r.try_get(0)?;
            let hash: Option<String> = r.try_get(1)?;
            let body: String = r.try_get(2)?;
            match (kind.as_str(), hash) {
                ("header", Some(hash)) => headers
                    .push(WireHeader { hash, header: parse_json(&body).ok_or(DbError::Unexpected("_sync_headers"))? }),
                ("payload", Some(hash)) => {
                    payloads.push((hash, parse_json(&body).ok_or(DbError::Unexpected("_sync_headers"))?))
                }
                ("complete", _) => complete = body == "true",
                _ => return Err(DbError::Unexpected("_sync_headers")),
            }
        }
        let payloads = (with_payloads && (complete || forward)).then_some(payloads);
        Ok((headers, complete, payloads))
    }

    /// Which of `hashes` the group's DAG holds (`causal._sync_stored`).
    pub async fn stored(&self, group: &str, hashes: &[String]) -> Result<Vec<String>, DbError> {
        let rows = self.query("SELECT causal._sync_stored($1, $2)", &[&group, &hashes]).await?;
        match rows.first() {
            Some(r) => Ok(r.try_get::<_, Option<Vec<String>>>(0)?.unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }

    /// Serves a payload request (`causal._sync_payloads`).
    pub async fn read_payloads(&self, group: &str, hashes: &[String]) -> Result<Vec<(String, Value)>, DbError> {
        let rows = self.query("SELECT hash, payload FROM causal._sync_payloads($1, $2)", &[&group, &hashes]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let body: String = r.try_get(1)?;
            out.push((r.try_get(0)?, parse_json(&body).ok_or(DbError::Unexpected("_sync_payloads"))?));
        }
        Ok(out)
    }

    /// Imports entries through `causal.import` (one transaction: validation, storage,
    /// reconciliation), and reads the group's frontier after it.
    pub async fn import(&self, group: &str, hashes: Vec<String>, bundle: Vec<u8>) -> Result<ImportOutcome, DbError> {
        let row = self.query_one("SELECT causal.import($1)::text", &[&bundle]).await?;
        let text: String = row.try_get(0)?;
        let result: Value = serde_json::from_str(&text).map_err(|_| DbError::Unexpected("causal.import"))?;
        let rejected: Vec<(String, String)> = result["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["hash"].as_str()?.to_string(), r["reason"].as_str().unwrap_or("").to_string())))
            .collect();
        let refused: std::collections::HashSet<&str> = rejected.iter().map(|(h, _)| h.as_str()).collect();
        let stored = hashes.iter().filter(|h| !refused.contains(h.as_str())).cloned().collect();
        let frontier = self.group(group).await?.map(|g| g.frontier).unwrap_or_default();
        Ok(ImportOutcome { stored, rejected, frontier })
    }

    /// Places local commits that wait for the reconciliation engine (`causal.catch_up`), about
    /// `max_rows` rows per group in one short transaction; returns how many entries it placed.
    pub async fn catch_up(&self, max_rows: i64) -> Result<i64, DbError> {
        let row = self.query_one("SELECT causal.catch_up(NULL, $1)", &[&max_rows]).await?;
        Ok(row.try_get(0)?)
    }

    /// Decodes committed transactions not sealed yet, about `max_rows` row operations at
    /// most (`causal._decode_commits`), in the form [`Db::seal_decoded`] takes.
    pub async fn decode_commits(&self, max_rows: i32) -> Result<Vec<u8>, DbError> {
        let row = self.query_one("SELECT causal._decode_commits($1)", &[&max_rows]).await?;
        Ok(row.try_get(0)?)
    }

    /// Seals what [`Db::decode_commits`] returned (`causal._seal_decoded`).
    pub async fn seal_decoded(&self, batch: &[u8]) -> Result<i64, DbError> {
        let row = self.query_one("SELECT causal._seal_decoded($1)", &[&batch]).await?;
        Ok(row.try_get(0)?)
    }

    /// Places sealed local commits without sealing first (`causal._place_sealed`), about
    /// `max_rows` rows per group; `None` when a run would cancel a local commit, which only
    /// [`Db::catch_up`] may place.
    pub async fn place_sealed(&self, max_rows: i64) -> Result<Option<i64>, DbError> {
        let row = self.query_one("SELECT causal._place_sealed($1)", &[&max_rows]).await?;
        Ok(row.try_get(0)?)
    }

    /// Seals the local commits (`causal.catch_up(NULL, 0)`): their entries are durable when
    /// this returns, whatever placement still has to do.
    pub async fn seal(&self) -> Result<(), DbError> {
        self.query_one("SELECT causal.catch_up(NULL, 0)", &[]).await?;
        Ok(())
    }

    /// Publishes the worker's status for `causal.peers` and `causal.sync_status`.
    pub async fn report(&self, report: &Value) -> Result<(), DbError> {
        let text = report.to_string();
        self.query_one("SELECT causal._sync_report($1::text::jsonb)", &[&text]).await?;
        Ok(())
    }
}
