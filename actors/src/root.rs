//! The `RootSupervisor`: starts the dispatcher and one pool per model, publishes their
//! handles in the [`Directory`], and restarts them with backoff when they fail. If the
//! dispatcher keeps failing it gives up and fails itself, which `/readyz` then reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_functions::ModelId;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::dispatcher::{Dispatcher, DispatcherArgs};
use crate::engine::Backend;
use crate::engine::Placement;
use crate::memory::Budgets;
use crate::model_pool::{ModelPool, PoolArgs};
use crate::supervision::{RestartBudget, RestartDecision, RestartPolicy};
use crate::tree::Directory;
use crate::{ModelConfig, ResponseCache};

pub(crate) enum RootMsg {
    RestartPool(ModelId),
    RestartDispatcher,
    /// A model registered at run time: start its pool.
    /// Answers `Ok(false)` when the model is served already (two adds raced).
    AddPool(
        Box<(ModelConfig, Placement)>,
        RpcReplyPort<Result<bool, String>>,
    ),
    /// A drained model: stop its pool and forget it (no restart).
    RemovePool(ModelId, RpcReplyPort<()>),
}

pub(crate) struct RootSupervisor;

pub(crate) struct RootArgs {
    pub models: Vec<ModelConfig>,
    pub backend: Arc<dyn Backend>,
    pub cache: Arc<dyn ResponseCache>,
    pub directory: Arc<Directory>,
    pub policy: RestartPolicy,
    pub budgets: Budgets,
    /// Where each model's layers go, decided once at start from the loaded devices.
    pub placements: std::collections::BTreeMap<genrt_functions::ModelId, Placement>,
}

/// Which child an actor id belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Child {
    Dispatcher,
    Pool(ModelId),
}

pub(crate) struct Root {
    args: RootArgs,
    children: HashMap<ActorId, Child>,
    budgets: HashMap<Child, RestartBudget>,
}

const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = Root;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<Root, ActorProcessingErr> {
        let mut root = Root {
            args,
            children: HashMap::new(),
            budgets: HashMap::new(),
        };
        for model in root.args.models.clone() {
            root.start_pool(&myself, model).await?;
        }
        root.start_dispatcher(&myself).await?;
        Ok(root)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMsg>,
        root: &mut Root,
    ) -> Result<(), ActorProcessingErr> {
        // Documented shutdown order: the dispatcher first, so no new work reaches the
        // pools; then the pools, which join their engine threads.
        root.children.clear();
        if let Some(dispatcher) = root.args.directory.take_dispatcher() {
            let _ = dispatcher.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
        }
        for pool in root.args.directory.take_pools() {
            let _ = pool.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        root: &mut Root,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::RestartPool(id) => {
                let config = root.args.models.iter().find(|m| m.id == id).cloned();
                if let Some(config) = config {
                    root.start_pool(&myself, config).await?;
                }
            }
            RootMsg::RestartDispatcher => root.start_dispatcher(&myself).await?,
            RootMsg::AddPool(added, reply) => {
                let (config, placement) = *added;
                if root.args.models.iter().any(|m| m.id == config.id) {
                    let _ = reply.send(Ok(false));
                    return Ok(());
                }
                root.args.placements.insert(config.id.clone(), placement);
                root.args.models.push(config.clone());
                // A pool that fails to start is the model's failure, not the root's.
                let result = root
                    .start_pool(&myself, config.clone())
                    .await
                    .map(|()| true)
                    .map_err(|e| e.to_string());
                if result.is_err() {
                    root.args.models.retain(|m| m.id != config.id);
                    root.args.placements.remove(&config.id);
                }
                let _ = reply.send(result);
            }
            RootMsg::RemovePool(id, reply) => {
                root.args.models.retain(|m| m.id != id);
                root.args.placements.remove(&id);
                let child = Child::Pool(id.clone());
                root.children.retain(|_, c| *c != child);
                root.budgets.remove(&child);
                if let Some(pool) = root.args.directory.remove_pool(&id) {
                    let _ = pool.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        root: &mut Root,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else {
            return Ok(());
        };
        let Some(child) = root.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        tracing::error!(?child, error = %err, "supervised actor failed");
        let policy = root.args.policy;
        let decision = root
            .budgets
            .entry(child.clone())
            .or_insert_with(|| RestartBudget::new(policy))
            .on_failure(Instant::now());
        match (decision, child) {
            (RestartDecision::RestartAfter(delay), Child::Dispatcher) => {
                myself.send_after(delay, || RootMsg::RestartDispatcher);
            }
            (RestartDecision::RestartAfter(delay), Child::Pool(id)) => {
                myself.send_after(delay, move || RootMsg::RestartPool(id.clone()));
            }
            (RestartDecision::GiveUp, Child::Pool(id)) => {
                // The other models keep serving; this one answers `model_unavailable`.
                tracing::error!(model = %id, "model pool failed too often; not restarting");
            }
            (RestartDecision::GiveUp, Child::Dispatcher) => {
                return Err("dispatcher failed too often; escalating".into());
            }
        }
        Ok(())
    }
}

impl Root {
    async fn start_pool(
        &mut self,
        myself: &ActorRef<RootMsg>,
        config: ModelConfig,
    ) -> Result<(), ActorProcessingErr> {
        let args = PoolArgs {
            config: config.clone(),
            backend: Arc::clone(&self.args.backend),
            policy: self.args.policy,
            budgets: self.args.budgets.clone(),
            placement: self
                .args
                .placements
                .get(&config.id)
                .cloned()
                .unwrap_or_else(Placement::cpu),
        };
        let (pool, _) = Actor::spawn_linked(None, ModelPool, args, myself.get_cell()).await?;
        self.children
            .insert(pool.get_id(), Child::Pool(config.id.clone()));
        self.args.directory.set_pool(config, pool);
        Ok(())
    }

    async fn start_dispatcher(
        &mut self,
        myself: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = DispatcherArgs {
            directory: Arc::clone(&self.args.directory),
            cache: Arc::clone(&self.args.cache),
        };
        let (dispatcher, _) =
            Actor::spawn_linked(None, Dispatcher, args, myself.get_cell()).await?;
        self.children.insert(dispatcher.get_id(), Child::Dispatcher);
        self.args.directory.set_dispatcher(dispatcher);
        Ok(())
    }
}
