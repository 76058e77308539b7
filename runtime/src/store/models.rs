//! The model registry's rows (see `crate::registry`).

use chrono::Utc;
use genrt_actors::ModelConfig;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entities::model;
use super::Store;

pub type ModelRow = model::Model;

/// A registration about to be recorded.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub id: String,
    /// `model` or `adapter`.
    pub kind: &'static str,
    /// The model an adapter adapts.
    pub base: Option<String>,
    pub owner: Option<String>,
    pub state: &'static str,
    pub source_kind: &'static str,
    pub source: Option<String>,
    pub sha256: String,
    /// Where the file is (a `path` source) or will be once fetched.
    pub path: String,
    /// A model's serving settings; an adapter has none.
    pub settings: Option<ModelConfig>,
    pub quantize: Option<String>,
    pub requantize: bool,
}

fn settings_json(config: &ModelConfig) -> String {
    serde_json::to_string(config).expect("a model config serializes")
}

/// A new row of `new`, in state `new.state`, nothing fetched yet.
fn new_row(new: &NewModel, size_bytes: i64) -> model::ActiveModel {
    let now = Utc::now();
    model::ActiveModel {
        id: Set(new.id.clone()),
        path: Set(new.path.clone()),
        n_ctx: Set(new.settings.as_ref().map_or(0, |s| s.n_ctx as i32)),
        registered_at: Set(now),
        owner: Set(new.owner.clone()),
        state: Set(new.state.into()),
        source_kind: Set(new.source_kind.into()),
        source: Set(new.source.clone()),
        sha256: Set((!new.sha256.is_empty()).then(|| new.sha256.clone())),
        size_bytes: Set(size_bytes),
        bytes_done: Set(0),
        settings: Set(new.settings.as_ref().map(settings_json)),
        info: Set(None),
        error_code: Set(None),
        error_message: Set(None),
        updated_at: Set(Some(now)),
        quantize: Set(new.quantize.clone()),
        requantize: Set(new.requantize),
        file_sha256: Set(None),
        kind: Set(new.kind.into()),
        base: Set(new.base.clone()),
        attempt: Set(uuid::Uuid::new_v4().simple().to_string()),
    }
}

impl Store {
    /// Seeds the registry with the configuration's models: the configuration wins over a row
    /// of the same id, so that a node serves what its file says.
    pub async fn seed_models(&self, models: &[ModelConfig]) -> Result<(), DbErr> {
        for m in models {
            let seeded = NewModel {
                id: m.id.as_str().to_owned(),
                kind: "model",
                base: None,
                owner: None,
                state: "ready",
                source_kind: "config",
                source: None,
                sha256: String::new(),
                path: m.path.display().to_string(),
                settings: Some(m.clone()),
                quantize: None,
                requantize: false,
            };
            self.seed(&seeded).await?;
        }
        Ok(())
    }

    /// Writes a row of the configuration over any row of its id (the configuration wins).
    pub async fn seed(&self, seeded: &NewModel) -> Result<(), DbErr> {
        let size = std::fs::metadata(&seeded.path).map_or(0, |md| md.len() as i64);
        let row = new_row(seeded, size);
        model::Entity::insert(row)
            .on_conflict(
                OnConflict::column(model::Column::Id)
                    .update_columns([
                        model::Column::Quantize,
                        model::Column::Requantize,
                        model::Column::FileSha256,
                        model::Column::Sha256,
                        model::Column::Info,
                        model::Column::Kind,
                        model::Column::Base,
                        model::Column::Path,
                        model::Column::NCtx,
                        model::Column::Owner,
                        model::Column::State,
                        model::Column::SourceKind,
                        model::Column::Source,
                        model::Column::SizeBytes,
                        model::Column::Settings,
                        model::Column::ErrorCode,
                        model::Column::ErrorMessage,
                        model::Column::UpdatedAt,
                        model::Column::Attempt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records a registration. Returns false, writing nothing, when the id is taken by a row
    /// that has not failed; a failed registration's row is replaced (trying again is the way
    /// out of a failure).
    pub async fn insert_model(&self, new: NewModel) -> Result<bool, DbErr> {
        // Insert-or-nothing, then clear a failed row and try once more: no read-then-write
        // transaction, which SQLite answers with SQLITE_BUSY when another write came between.
        for _ in 0..2 {
            let row = new_row(&new, 0);
            let inserted = model::Entity::insert(row)
                .on_conflict(
                    OnConflict::column(model::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&self.db)
                .await?;
            if inserted > 0 {
                return Ok(true);
            }
            let cleared = model::Entity::delete_many()
                .filter(model::Column::Id.eq(new.id.as_str()))
                .filter(model::Column::State.eq("failed"))
                .exec(&self.db)
                .await?;
            if cleared.rows_affected == 0 {
                return Ok(false);
            }
        }
        Ok(false)
    }

    pub async fn model_row(&self, id: &str) -> Result<Option<ModelRow>, DbErr> {
        model::Entity::find_by_id(id.to_owned()).one(&self.db).await
    }

    /// Every row, oldest registration first.
    pub async fn model_rows(&self) -> Result<Vec<ModelRow>, DbErr> {
        model::Entity::find()
            .order_by_asc(model::Column::RegisteredAt)
            .order_by_asc(model::Column::Id)
            .all(&self.db)
            .await
    }

    /// Bytes fetched, hashed or received so far by registration `at`, against the whole when
    /// known.
    pub async fn model_progress(&self, at: Attempt<'_>, done: u64, size: u64) -> Result<(), DbErr> {
        model::Entity::update_many()
            .col_expr(model::Column::BytesDone, Expr::value(done as i64))
            .col_expr(model::Column::SizeBytes, Expr::value(size as i64))
            .col_expr(model::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(model::Column::Id.eq(at.id))
            .filter(model::Column::Attempt.eq(at.attempt))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Moves registration `at` from `from` to `to`. Nothing happens if the row is no longer
    /// in `from` (a registration deleted meanwhile stays deleted) or no longer `at`'s attempt
    /// (the id was registered again since). Returns whether it moved.
    pub async fn model_transition(
        &self,
        at: Attempt<'_>,
        from: &[&str],
        to: &str,
        change: ModelChange,
    ) -> Result<bool, DbErr> {
        self.model_transition_any(at.id, Some(at.attempt), from, to, change)
            .await
    }

    /// As [`Self::model_transition`], for whichever attempt holds the id when `attempt` is
    /// `None` (a deletion is of the id, not of one registration of it).
    pub async fn model_transition_any(
        &self,
        id: &str,
        attempt: Option<&str>,
        from: &[&str],
        to: &str,
        change: ModelChange,
    ) -> Result<bool, DbErr> {
        let mut update = model::Entity::update_many()
            .col_expr(model::Column::State, Expr::value(to))
            .col_expr(model::Column::UpdatedAt, Expr::value(Utc::now()));
        if let Some(path) = change.path {
            update = update.col_expr(model::Column::Path, Expr::value(path));
        }
        if let Some(info) = change.info {
            update = update.col_expr(model::Column::Info, Expr::value(info));
        }
        if let Some(size) = change.size_bytes {
            update = update
                .col_expr(model::Column::SizeBytes, Expr::value(size as i64))
                .col_expr(model::Column::BytesDone, Expr::value(size as i64));
        }
        if let Some(sha) = change.file_sha256 {
            update = update.col_expr(model::Column::FileSha256, Expr::value(sha));
        }
        if let Some((code, message)) = change.error {
            update = update
                .col_expr(model::Column::ErrorCode, Expr::value(code))
                .col_expr(model::Column::ErrorMessage, Expr::value(message));
        }
        if let Some(attempt) = attempt {
            update = update.filter(model::Column::Attempt.eq(attempt));
        }
        let result = update
            .filter(model::Column::Id.eq(id))
            .filter(model::Column::State.is_in(from.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// Deletes the row of `id` once its deletion has drained (`deleting`; a row in any other
    /// state is not this deletion's).
    pub async fn delete_model_row(&self, id: &str) -> Result<(), DbErr> {
        model::Entity::delete_many()
            .filter(model::Column::Id.eq(id))
            .filter(model::Column::State.eq("deleting"))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Whether a row other than `except` names the file at `path`.
    pub async fn model_path_in_use(&self, path: &str, except: &str) -> Result<bool, DbErr> {
        Ok(model::Entity::find()
            .filter(model::Column::Path.eq(path))
            .filter(model::Column::Id.ne(except))
            .one(&self.db)
            .await?
            .is_some())
    }
}

/// One registration of a model id: the row's id and the attempt that wrote it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub id: &'a str,
    pub attempt: &'a str,
}

impl<'a> Attempt<'a> {
    pub fn of(row: &'a ModelRow) -> Self {
        Self {
            id: &row.id,
            attempt: &row.attempt,
        }
    }
}

/// What a state change also records.
#[derive(Debug, Default)]
pub struct ModelChange {
    pub path: Option<String>,
    pub info: Option<String>,
    pub size_bytes: Option<u64>,
    pub file_sha256: Option<String>,
    pub error: Option<(String, String)>,
}
