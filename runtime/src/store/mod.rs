//! Persistence through sea-orm, on SQLite (the embedded default) or Postgres. Every query
//! that reads tenant data filters on the tenant: there is no function here that takes a
//! function name without a tenant.

mod batches;
mod cluster;
mod deliveries;
pub mod entities;
mod idempotency;
mod jobs;
mod models;
mod recorder;
mod releases;
mod tenants;
mod triggers;
mod usage;

pub use batches::BatchRow;
pub use deliveries::{AttemptRow, DeliveryNext};
pub use idempotency::KeyClaim;
pub use jobs::{DeliveryRow, InvocationFilter, JobEnd};
pub use models::{Attempt, ModelChange, ModelRow, NewModel};
pub use recorder::Recorder;
pub(crate) use releases::decode_target;
pub use releases::{
    ActivityRow, AliasAction, AliasEventRow, AliasRefusal, AliasWrite, OutputRow, ScoreRow,
    ShadowPair, StoredAlias,
};
pub use tenants::{ApiKeyRow, TenantRow, TenantSettings};
pub use triggers::TriggerRow;
pub use usage::{UsageGroup, UsageRow};

use std::time::Duration;

use chrono::{DateTime, Utc};
use genrt_functions::{FunctionName, FunctionSpec, TenantId};
use genrt_migrations::{Migrator, MigratorTrait};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, Set, SqlErr,
    TransactionTrait,
};
use uuid::Uuid;

use crate::config::Config;
use entities::{function, function_version, invocation, tenant};

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// A stored function version with its decoded spec.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub version: u32,
    pub spec: FunctionSpec,
    pub digest: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub version: StoredVersion,
    /// False when the spec was identical to the latest version, which is returned instead.
    pub created: bool,
}

pub type FunctionRow = function::Model;
pub type InvocationRow = invocation::Model;

impl Store {
    /// Connects, creating the SQLite file and its folder when needed, and runs migrations.
    /// Boxed so that the binary's `migrate` does not compile the migrations again (see
    /// `app::start`).
    pub fn connect(config: &Config) -> futures_util::future::BoxFuture<'_, Result<Self, DbErr>> {
        Box::pin(Self::connect_and_migrate(config))
    }

    async fn connect_and_migrate(config: &Config) -> Result<Self, DbErr> {
        let url = config.database_url();
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                DbErr::Custom(format!("cannot create {}: {e}", config.data_dir.display()))
            })?;
        }
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(config.database.max_connections)
            .acquire_timeout(Duration::from_secs(config.database.acquire_timeout_s))
            .connect_timeout(Duration::from_secs(config.database.acquire_timeout_s))
            .sqlx_logging(false)
            // On every connection of the pool, not only the first: WAL lets readers proceed
            // while a write commits, and in WAL mode `synchronous=NORMAL` (SQLite's advice
            // for it) syncs at checkpoints instead of at every commit. A crash of the process
            // loses nothing; a power cut may lose the last commits, never the database. Each
            // invocation's record is a commit, and a sync per commit put a disk flush beside
            // every request. Postgres is the store for what must survive power cuts.
            .map_sqlx_sqlite_opts(|opts| {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                opts.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
            });
        let db = Database::connect(options).await?;
        let store = Self { db };
        store.migrate().await?;
        Ok(store)
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock first: a
    /// deferred transaction that reads and then writes cannot wait for the lock (SQLite answers
    /// `SQLITE_BUSY` at once when another connection committed since its read, e.g. the
    /// invocation recorder), whereas a first statement that writes waits out the busy timeout.
    /// sqlx offers no `BEGIN IMMEDIATE` through sea-orm, hence a write that changes nothing.
    pub(crate) async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.db.begin().await?;
        if self.db.get_database_backend() == DbBackend::Sqlite {
            txn.execute_unprepared("DELETE FROM tenants WHERE 0")
                .await?;
        }
        Ok(txn)
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    pub async fn close(self) {
        let _ = self.db.close().await;
    }

    async fn ensure_tenant(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<(), DbErr> {
        let row = tenant::ActiveModel {
            id: Set(tenant.as_str().to_owned()),
            disabled: Set(false),
            created_at: Set(Utc::now()),
            ..Default::default()
        };
        tenant::Entity::insert(row)
            .on_conflict(
                OnConflict::column(tenant::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .do_nothing()
            .exec(db)
            .await?;
        Ok(())
    }

    /// Stores `spec` as the next version of the function, unless it is identical to the
    /// latest version. Concurrent deploys of one function are serialised by the unique
    /// (function, version) index: the loser retries on the new latest version.
    pub async fn deploy(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        spec: &FunctionSpec,
    ) -> Result<Deployment, DbErr> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_deploy(tenant, name, spec).await {
                Err(err)
                    if attempt < 3
                        && matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn try_deploy(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        spec: &FunctionSpec,
    ) -> Result<Deployment, DbErr> {
        let digest = spec.digest();
        let spec_json = serde_json::to_string(spec).map_err(|e| DbErr::Custom(e.to_string()))?;
        let now = Utc::now();
        let txn = self.begin_write().await?;
        Self::ensure_tenant(&txn, tenant).await?;
        let existing = function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant.as_str()))
            .filter(function::Column::Name.eq(name.as_str()))
            .one(&txn)
            .await?;
        let (function_id, version) = match existing {
            None => {
                let row = function::ActiveModel {
                    tenant_id: Set(tenant.as_str().to_owned()),
                    name: Set(name.as_str().to_owned()),
                    latest_version: Set(1),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .insert(&txn)
                .await?;
                (row.id, 1)
            }
            Some(f) => {
                let latest = function_version::Entity::find()
                    .filter(function_version::Column::FunctionId.eq(f.id))
                    .filter(function_version::Column::Version.eq(f.latest_version))
                    .one(&txn)
                    .await?;
                if let Some(latest) = latest.filter(|v| v.spec_digest == digest) {
                    txn.rollback().await?;
                    return Ok(Deployment {
                        version: decode_version(latest)?,
                        created: false,
                    });
                }
                let next = f.latest_version + 1;
                let mut update: function::ActiveModel = f.clone().into();
                update.latest_version = Set(next);
                update.updated_at = Set(now);
                update.update(&txn).await?;
                (f.id, next)
            }
        };
        let row = function_version::ActiveModel {
            function_id: Set(function_id),
            version: Set(version),
            spec: Set(spec_json),
            spec_digest: Set(digest),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(Deployment {
            version: decode_version(row)?,
            created: true,
        })
    }

    pub async fn list_functions(&self, tenant: &TenantId) -> Result<Vec<FunctionRow>, DbErr> {
        function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(function::Column::Name)
            .all(&self.db)
            .await
    }

    pub async fn function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<FunctionRow>, DbErr> {
        function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant.as_str()))
            .filter(function::Column::Name.eq(name.as_str()))
            .one(&self.db)
            .await
    }

    /// The version invocations use: the latest.
    pub async fn latest_version(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<StoredVersion>, DbErr> {
        let Some(f) = self.function(tenant, name).await? else {
            return Ok(None);
        };
        function_version::Entity::find()
            .filter(function_version::Column::FunctionId.eq(f.id))
            .filter(function_version::Column::Version.eq(f.latest_version))
            .one(&self.db)
            .await?
            .map(decode_version)
            .transpose()
    }

    /// One version of a function, as queued work pinned it.
    pub async fn version(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u32,
    ) -> Result<Option<StoredVersion>, DbErr> {
        let Some(f) = self.function(tenant, name).await? else {
            return Ok(None);
        };
        function_version::Entity::find()
            .filter(function_version::Column::FunctionId.eq(f.id))
            .filter(function_version::Column::Version.eq(version as i32))
            .one(&self.db)
            .await?
            .map(decode_version)
            .transpose()
    }

    pub async fn versions(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<Vec<StoredVersion>>, DbErr> {
        let Some(f) = self.function(tenant, name).await? else {
            return Ok(None);
        };
        let rows = function_version::Entity::find()
            .filter(function_version::Column::FunctionId.eq(f.id))
            .order_by_asc(function_version::Column::Version)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(decode_version)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Deletes a function and its versions. Invocation records stay, for history.
    pub async fn delete_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<bool, DbErr> {
        let txn = self.begin_write().await?;
        let found = function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant.as_str()))
            .filter(function::Column::Name.eq(name.as_str()))
            .one(&txn)
            .await?;
        let Some(f) = found else {
            return Ok(false);
        };
        Self::delete_releases(&txn, f.id).await?;
        function_version::Entity::delete_many()
            .filter(function_version::Column::FunctionId.eq(f.id))
            .exec(&txn)
            .await?;
        function::Entity::delete_by_id(f.id).exec(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }

    pub async fn insert_invocations(&self, rows: Vec<InvocationRow>) -> Result<(), DbErr> {
        let inserts = self.invocations_insert(&rows, false);
        self.execute_insert(inserts).await
    }

    /// The INSERTs of every row, as statements for this store's database: a pure, CPU-only
    /// step (a few milliseconds for a full batch of the write-behind recorder), kept apart
    /// from executing them so that the recorder can run it off the async workers.
    ///
    /// The rows go in chunks of [`INSERT_ROWS`] rows, not in one statement: sqlx prepares a
    /// statement once per connection and SQL text (and keeps 100), and one INSERT per batch
    /// made a new text for nearly every batch size, which SQLite parsed anew each time (a
    /// third of the database thread's CPU on the cached path under load, `perf` of
    /// `genrt-bench`'s cached phase). In these sizes the texts repeat and stay prepared.
    ///
    /// `skip_stored` leaves out rows whose id is already stored, for a retry after an error
    /// that may have come after the commit (a connection lost on its way back): the retry
    /// then completes instead of failing on the primary key for ever.
    pub fn invocations_insert(
        &self,
        rows: &[InvocationRow],
        skip_stored: bool,
    ) -> Vec<sea_orm::Statement> {
        invocation_inserts(self.backend(), rows, skip_stored)
    }

    /// Runs the statements of [`Self::invocations_insert`]: all of them or none.
    pub async fn execute_insert(&self, inserts: Vec<sea_orm::Statement>) -> Result<(), DbErr> {
        if inserts.len() <= 1 {
            for insert in inserts {
                self.db.execute(insert).await?;
            }
            return Ok(());
        }
        // The first statement writes, so SQLite's deferred transaction takes the write lock
        // at once (waiting out the busy timeout like any write; see `begin_write`).
        let txn = self.db.begin().await?;
        for insert in inserts {
            txn.execute(insert).await?;
        }
        txn.commit().await
    }

    /// Number of stored invocations of a tenant; lets tests prove rejected work left no rows.
    pub async fn count_invocations(&self, tenant: &TenantId) -> Result<u64, DbErr> {
        use sea_orm::PaginatorTrait;
        invocation::Entity::find()
            .filter(invocation::Column::TenantId.eq(tenant.as_str()))
            .count(&self.db)
            .await
    }

    pub async fn invocation(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<InvocationRow>, DbErr> {
        invocation::Entity::find_by_id(id)
            .filter(invocation::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await
    }
}

/// The INSERTs of [`Store::invocations_insert`], for any connection of `backend`.
pub(super) fn invocation_inserts(
    backend: DbBackend,
    rows: &[InvocationRow],
    skip_stored: bool,
) -> Vec<sea_orm::Statement> {
    use sea_orm::sea_query::OnConflict;
    use sea_orm::QueryTrait;
    let mut inserts = Vec::new();
    let mut rest = rows;
    for size in INSERT_ROWS {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            let mut insert = invocation::Entity::insert_many(
                chunk.iter().cloned().map(invocation::ActiveModel::from),
            );
            if skip_stored {
                insert = insert.on_conflict(
                    OnConflict::column(invocation::Column::Id)
                        .do_nothing()
                        .to_owned(),
                );
            }
            inserts.push(insert.build(backend));
            rest = tail;
        }
    }
    inserts
}

/// Rows per INSERT of invocation records, largest first (see [`Store::invocations_insert`]):
/// at most 3 statements of each smaller size per batch, and 64 rows × 40 columns stay far
/// below SQLite's 32,766 bound parameters.
const INSERT_ROWS: [usize; 4] = [64, 16, 4, 1];

fn decode_version(row: function_version::Model) -> Result<StoredVersion, DbErr> {
    let spec = serde_json::from_str(&row.spec).map_err(|e| {
        DbErr::Custom(format!(
            "stored spec of version {} is unreadable: {e}",
            row.version
        ))
    })?;
    Ok(StoredVersion {
        version: row.version as u32,
        spec,
        digest: row.spec_digest,
        created_at: row.created_at,
    })
}
