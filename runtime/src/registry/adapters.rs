//! LoRA adapters in the registry. An adapter is a row of `models` with `kind = 'adapter'`,
//! id `base:name` and `base` naming the model it adapts, so that it goes through the same
//! states, jobs, progress, deletion and multi-node sync as a model. What differs:
//!
//! - validation reads the adapter against its base's file (`engine::gguf::check_adapter`):
//!   a LoRA GGUF, the base's architecture, every adapted weight present in the base with
//!   matching shapes; refused with `not_an_adapter` or `adapter_mismatch`;
//! - serving an adapter adds it to the actor tree's directory (`ActorTree::add_adapter`): it
//!   is loaded by a model's replicas when a sequence first uses it, not at registration;
//! - deleting one refuses it to new invocations at once (`unknown_adapter`); sequences running
//!   with it finish, since they hold it loaded;
//! - a tenant (`models:write`) registers adapters named `<tenant>.<name>` on any model it can
//!   use, by URL or upload, within `max_adapters` and `max_adapter_mb`.

use std::path::PathBuf;
use std::sync::Arc;

use genrt_actors::engine::gguf::{self, AdapterProblem};
use genrt_actors::Adapter;
use genrt_functions::{ModelId, TenantId};
use tokio_util::sync::CancellationToken;

use super::{
    check_sha256, check_tenant_registration, fetch, valid_model_id, Failure, ModelRegistry, Source,
    MAX_ID_LEN,
};
use crate::config::AdapterSeed;
use crate::error::{ApiError, ErrorCode};
use crate::store::{Attempt, ModelChange, ModelRow, NewModel};
use crate::tenancy::{Caller, Scope};

/// An adapter registration as the API accepted it.
#[derive(Debug, Clone)]
pub struct AdapterRegistration {
    pub model: ModelId,
    /// The adapter's name, unique per model.
    pub name: String,
    pub source: Source,
    pub sha256: String,
    /// The tenant a private adapter is registered for; `None` for a public one.
    pub owner: Option<TenantId>,
}

/// The registry id of adapter `name` of `model`: how a function or an OpenAI request names
/// it.
pub fn adapter_id(model: &ModelId, name: &str) -> String {
    format!("{model}:{name}")
}

/// Whether this node already serves `row`'s adapter with its file.
pub(super) fn is_served(row: &ModelRow, served: &[(ModelId, String, Adapter)]) -> bool {
    served.iter().any(|(model, name, adapter)| {
        adapter_id(model, name) == row.id && Some(&adapter.sha256) == row.sha256.as_ref()
    })
}

/// Whether an adapter this node serves as `served` is no longer the registry's (`row` being
/// its entry now): deleted, being deleted, failed, or registered again with another file.
pub(super) fn is_stale(row: Option<&ModelRow>, served: &Adapter) -> bool {
    row.is_none_or(|row| row.state != "ready" || row.sha256.as_ref() != Some(&served.sha256))
}

fn adapter_not_found(model: &ModelId, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AdapterNotFound,
        format!("model `{model}` has no adapter `{name}`"),
    )
}

impl ModelRegistry {
    /// Registers the configuration's adapters (`[[adapters]]`) before the server listens: each
    /// file is hashed (its sha256 is its identity in the engine's adapter sets and the
    /// response cache, like a registered one's) and validated against its model now, so that
    /// functions naming it deploy at once. One that fails is left `failed` with its code and
    /// the others still serve, as a configured model that cannot load does.
    ///
    /// A row that already says what the configuration says (`ready`, same base, path and
    /// sha256: this node's previous run, or another node of the same database with the same
    /// file) is left as it is, so that restarting a node never takes the adapter away from the
    /// others; the sync then serves it here. A row registered through the API under the same
    /// id, or being deleted, is not overwritten: the configured one is skipped with a warning.
    pub async fn seed_adapters(&self, seeds: &[AdapterSeed]) -> Result<(), sea_orm::DbErr> {
        for seed in seeds {
            let model = ModelId::new(seed.model.clone());
            let id = adapter_id(&model, &seed.id);
            let path = seed.path.display().to_string();
            let hashed = fetch::hash_file(&seed.path, None, &CancellationToken::new()).await;
            let sha256 = hashed
                .as_ref()
                .map(|h| h.sha256.clone())
                .unwrap_or_default();
            if let Some(existing) = self.inner.store.model_row(&id).await? {
                if existing.source_kind != "config" || existing.state == "deleting" {
                    tracing::warn!(adapter = %id, state = %existing.state, source = %existing.source_kind,
                        "configured adapter skipped: the registry has this id already");
                    continue;
                }
                let same = existing.state == "ready"
                    && existing.base.as_deref() == Some(model.as_str())
                    && existing.path == path
                    && existing.sha256.as_deref() == Some(sha256.as_str());
                if same {
                    self.remember(&seed.path, &sha256);
                    continue;
                }
            }
            let new = NewModel {
                id: id.clone(),
                kind: "adapter",
                base: Some(model.as_str().to_owned()),
                owner: None,
                state: "registering",
                source_kind: "config",
                source: None,
                sha256,
                path,
                settings: None,
                quantize: None,
                requantize: false,
            };
            self.inner.store.seed(&new).await?;
            let Some(row) = self.inner.store.model_row(&id).await? else {
                continue;
            };
            match hashed {
                Ok(hashed) => {
                    self.remember(&seed.path, &hashed.sha256);
                    // Seeding happens before the server listens; nothing cancels it.
                    let never = CancellationToken::new();
                    self.validate_adapter_and_serve(&row, &never).await;
                }
                Err(failure) => self.fail(&row, failure).await,
            }
        }
        Ok(())
    }

    /// Accepts an adapter registration: the name, sha256 and source now, and that `caller`
    /// can use the base model; the file is fetched and validated in the background.
    pub async fn register_adapter(
        &self,
        r: AdapterRegistration,
        caller: &Caller,
    ) -> Result<ModelRow, ApiError> {
        if !valid_model_id(&r.name) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("adapter id `{}` must be 1 to {MAX_ID_LEN} lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit", r.name),
            )
            .with_field("id"));
        }
        let sha256 = check_sha256(&r.sha256)?;
        self.base_row(&r.model, caller).await?;
        if let Some(owner) = &r.owner {
            self.check_private_adapter(owner, &r).await?;
        }
        let id = adapter_id(&r.model, &r.name);
        let (state, kind, source, path) = self.place_source(&r.source, &id, &sha256)?;
        let inserted = self
            .inner
            .store
            .insert_model(NewModel {
                id: id.clone(),
                kind: "adapter",
                base: Some(r.model.as_str().to_owned()),
                owner: r.owner.as_ref().map(|o| o.as_str().to_owned()),
                state,
                source_kind: kind,
                source,
                sha256,
                path,
                settings: None,
                quantize: None,
                requantize: false,
            })
            .await?;
        if !inserted {
            return Err(ApiError::new(
                ErrorCode::ModelExists,
                format!(
                    "model `{}` already has an adapter `{}` (delete it first)",
                    r.model, r.name
                ),
            )
            .with_field("id"));
        }
        let row = self.row(&id).await?;
        if state == "registering" {
            self.spawn_job(&row);
        }
        Ok(row)
    }

    /// The row of the model an adapter is registered for: a model `caller` can see.
    async fn base_row(&self, model: &ModelId, caller: &Caller) -> Result<ModelRow, ApiError> {
        let row = self
            .inner
            .store
            .model_row(model.as_str())
            .await?
            .filter(|r| r.kind == "model" && Self::visible(r, caller))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ModelNotFound,
                    format!("model `{model}` is not registered"),
                )
            })?;
        if row.state == "deleting" {
            return Err(ApiError::new(
                ErrorCode::ModelDraining,
                format!("model `{model}` is being deleted"),
            ));
        }
        Ok(row)
    }

    /// A tenant's own adapter: named `<tenant>.<name>` (no two tenants' names collide, so a
    /// taken name tells nothing of another tenant), by URL or upload, within `max_adapters`.
    async fn check_private_adapter(
        &self,
        owner: &TenantId,
        r: &AdapterRegistration,
    ) -> Result<(), ApiError> {
        check_tenant_registration(owner, &r.name, &r.source, "adapter")?;
        let limits = self.inner.tenancy.limits_of(owner).await?;
        let id = adapter_id(&r.model, &r.name);
        let held = self
            .owned(owner, "adapter")
            .await?
            .iter()
            .filter(|row| row.id != id)
            .count();
        if held >= limits.max_adapters as usize {
            return Err(ApiError::new(
                ErrorCode::AdapterQuotaExceeded,
                format!(
                    "tenant `{owner}` holds {held} of its {} own adapters (max_adapters)",
                    limits.max_adapters
                ),
            ));
        }
        Ok(())
    }

    /// The adapters of `model` that `caller` may see, oldest first.
    pub async fn adapter_rows(
        &self,
        model: &ModelId,
        caller: &Caller,
    ) -> Result<Vec<ModelRow>, ApiError> {
        self.base_row(model, caller).await?;
        Ok(self
            .inner
            .store
            .model_rows()
            .await?
            .into_iter()
            .filter(|r| {
                r.kind == "adapter"
                    && r.base.as_deref() == Some(model.as_str())
                    && Self::visible(r, caller)
            })
            .collect())
    }

    /// Adapter `name` of `model`, if `caller` may see it; `adapter_not_found` otherwise.
    pub async fn adapter_row(
        &self,
        model: &ModelId,
        name: &str,
        caller: &Caller,
    ) -> Result<ModelRow, ApiError> {
        self.base_row(model, caller).await?;
        self.inner
            .store
            .model_row(&adapter_id(model, name))
            .await?
            .filter(|r| r.kind == "adapter" && Self::visible(r, caller))
            .ok_or_else(|| adapter_not_found(model, name))
    }

    /// The adapter's row if `caller` may change it (upload, delete): the operator any, a
    /// tenant with `models:write` its own; `adapter_not_found` for another tenant's.
    pub async fn adapter_for_change(
        &self,
        model: &ModelId,
        name: &str,
        caller: &Caller,
    ) -> Result<ModelRow, ApiError> {
        let row = self.adapter_row(model, name, caller).await?;
        if !caller.scopes.contains(Scope::Admin) && row.owner.is_none() {
            return Err(ApiError::new(
                ErrorCode::InsufficientScope,
                format!("adapter `{name}` is public: only the operator (`admin`) changes it"),
            ));
        }
        Ok(row)
    }

    /// Validates a fetched adapter against its base model, marks it `ready` with what was
    /// read, and serves it.
    pub(super) async fn validate_adapter_and_serve(
        &self,
        row: &ModelRow,
        cancel: &CancellationToken,
    ) {
        if !self.begin_validation(row).await {
            return;
        }
        let inner = &self.inner;
        let base = ModelId::new(row.base.clone().unwrap_or_default());
        let base_path = match inner.tree.model(&base) {
            Some(config) => Some(config.path),
            None => inner
                .store
                .model_row(base.as_str())
                .await
                .ok()
                .flatten()
                .map(|r| PathBuf::from(r.path)),
        };
        let Some(base_path) = base_path else {
            let failure = Failure::new(
                ErrorCode::AdapterMismatch,
                format!("model `{base}` is no longer registered"),
            );
            return self.fail(row, failure).await;
        };
        let adapter = PathBuf::from(&row.path);
        let (tree, stop) = (Arc::clone(&inner.tree), cancel.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let info =
                gguf::check_adapter(&adapter, &base_path).map_err(|problem| match problem {
                    AdapterProblem::File(file) => Failure::from(file),
                    AdapterProblem::NotAdapter(_) => {
                        Failure::new(ErrorCode::NotAnAdapter, problem.to_string())
                    }
                    AdapterProblem::Mismatch(_) => {
                        Failure::new(ErrorCode::AdapterMismatch, problem.to_string())
                    }
                })?;
            // Then through llama.cpp's own loader, in a child process (`engine::tool`).
            tree.probe_adapter(&base_path, &adapter, &|| stop.is_cancelled())
                .map_err(|e| {
                    super::tool_failure(e, ErrorCode::ModelUnloadable, |reason| {
                        format!("this llama.cpp cannot load the adapter onto its base: {reason}")
                    })
                })?;
            Ok(info)
        })
        .await
        .unwrap_or_else(|e| Err(Failure::new(ErrorCode::Internal, e.to_string())));
        let info = match checked {
            Ok(info) => info,
            Err(failure) => return self.fail(row, failure).await,
        };
        let change = ModelChange {
            info: serde_json::to_string(&info).ok(),
            size_bytes: Some(info.file_bytes),
            ..Default::default()
        };
        match inner
            .store
            .model_transition(Attempt::of(row), &["validating"], "ready", change)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::error!(adapter = %row.id, error = %err, "cannot record a validated adapter");
                return;
            }
        }
        tracing::info!(adapter = %row.id, rank = info.rank, targets = ?info.targets, "adapter registered");
        let Ok(Some(ready)) = inner.store.model_row(&row.id).await else {
            return;
        };
        if ready.attempt != row.attempt || ready.state != "ready" {
            return;
        }
        if let Err(err) = self.serve_adapter(&ready).await {
            let failure = Failure::new(ErrorCode::ModelUnavailable, err);
            self.fail_state(&ready, &["ready"], failure).await;
        }
    }

    /// Serves a `ready` adapter on this node if it does not yet (with this file).
    pub(super) async fn sync_adapter(&self, row: &ModelRow, served: &[(ModelId, String, Adapter)]) {
        if is_served(row, served) {
            return;
        }
        if let Err(err) = self.serve_adapter(row).await {
            tracing::warn!(adapter = %row.id, error = %err, "registered adapter not served on this node");
        }
    }

    /// Lets this node's invocations use a `ready` adapter, once its file matches its sha256.
    pub(super) async fn serve_adapter(&self, row: &ModelRow) -> Result<(), String> {
        let id = ModelId::new(row.id.clone());
        let (base, Some(name)) = id.split_adapter() else {
            return Err(format!("adapter id `{}` has no `:`", row.id));
        };
        self.verify_file(row).await?;
        let owner = match &row.owner {
            Some(owner) => Some(TenantId::parse(owner).map_err(|e| e.to_string())?),
            None => None,
        };
        let adapter = Adapter {
            path: PathBuf::from(&row.path),
            sha256: row.sha256.clone().unwrap_or_default(),
            owner,
        };
        self.inner.tree.add_adapter(&base, name, adapter);
        Ok(())
    }
}
