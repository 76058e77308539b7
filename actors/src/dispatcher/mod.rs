//! The `Dispatcher`: resolves an invocation's model (applying the function's route), then
//! forwards it to the function's actor, starting that actor on first use. It supervises the
//! function actors and retires them when they report idleness.

mod messages;
mod state;

use std::sync::Arc;

use genrt_functions::ModelTarget;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

pub(crate) use messages::DispatcherMsg;
pub(crate) use state::FunctionKey;
use state::RoutingTable;

use crate::engine::{AdapterSet, AdapterSpec};
use crate::function::{FunctionActor, FunctionArgs, FunctionMsg};
use crate::tree::Directory;
use crate::{Invocation, InvocationOutcome, InvokeError, ResponseCache};

pub(crate) struct Dispatcher;

pub(crate) struct DispatcherArgs {
    pub directory: Arc<Directory>,
    pub cache: Arc<dyn ResponseCache>,
}

pub(crate) struct DispatcherState {
    directory: Arc<Directory>,
    cache: Arc<dyn ResponseCache>,
    functions: RoutingTable<ActorRef<FunctionMsg>>,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        Ok(DispatcherState {
            directory: args.directory,
            cache: args.cache,
            functions: RoutingTable::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        for function in state.functions.handles() {
            function.stop(Some("shutdown".into()));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Invoke(invocation, reply) => {
                state.dispatch(&myself, invocation, reply).await;
            }
            DispatcherMsg::FunctionIdle(key, actor) => {
                if let Some(function) = state.functions.retire(&key, actor) {
                    tracing::info!(tenant = %key.tenant, function = %key.name, version = key.version, "function actor idle: stopping");
                    // Drain, not stop: an invocation routed to it just before retirement
                    // is still served.
                    let _ = function.drain();
                }
            }
            DispatcherMsg::ActiveVersions(tenant, name, reply) => {
                let _ = reply.send(state.functions.active_versions(&tenant, &name));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        event: SupervisionEvent,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => state.functions.forget(cell.get_id()),
            SupervisionEvent::ActorFailed(cell, err) => {
                // A function actor holds no state worth keeping: the next invocation starts
                // a fresh one, so forgetting it is the whole restart policy.
                tracing::warn!(actor = %cell.get_id(), error = %err, "function actor failed");
                state.functions.forget(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

impl DispatcherState {
    async fn dispatch(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        invocation: Invocation,
        reply: RpcReplyPort<Result<InvocationOutcome, InvokeError>>,
    ) {
        let function = Arc::clone(&invocation.function);
        let target = match &function.spec.target {
            ModelTarget::Model(model) => model.clone(),
            ModelTarget::Route(route) => match route.choose(&invocation.input) {
                Ok(model) => model.clone(),
                Err(err) => {
                    let _ = reply.send(Err(err.into()));
                    return;
                }
            },
        };
        let (model, named) = target.split_adapter();
        let wanted = named.map(|name| (name, 1.0)).into_iter().chain(
            function
                .spec
                .adapters
                .iter()
                .map(|a| (a.id.as_str(), a.scale)),
        );
        let mut specs = Vec::new();
        for (name, scale) in wanted {
            // Another tenant's private adapter is as missing as one never registered.
            let Some(adapter) = self.directory.adapter(&model, name, &function.tenant) else {
                let _ = reply.send(Err(InvokeError::UnknownAdapter {
                    model,
                    adapter: name.to_owned(),
                }));
                return;
            };
            specs.push(AdapterSpec {
                name: name.to_owned(),
                path: adapter.path,
                sha256: adapter.sha256,
                scale,
            });
        }
        let adapters = AdapterSet::new(specs);
        if self.directory.is_draining(&model) {
            let _ = reply.send(Err(InvokeError::ModelDraining(model)));
            return;
        }
        // Another tenant's private model is as missing as one never registered.
        let Some((config, pool)) = self
            .directory
            .pool(&model)
            .filter(|(config, _)| config.visible_to(&function.tenant))
        else {
            let _ = reply.send(Err(InvokeError::UnknownModel(model)));
            return;
        };
        let key = FunctionKey {
            tenant: function.tenant.clone(),
            name: function.name.clone(),
            version: function.version,
            digest: function.digest.clone(),
        };
        let actor = match self.functions.get(&key) {
            Some(actor) => actor,
            None => {
                let args = FunctionArgs {
                    key: key.clone(),
                    function: (*function).clone(),
                    cache: Arc::clone(&self.cache),
                    dispatcher: myself.clone(),
                };
                match Actor::spawn_linked(None, FunctionActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        tracing::debug!(tenant = %key.tenant, function = %key.name, version = key.version, "function actor started");
                        self.functions.insert(key, actor.get_id(), actor.clone());
                        actor
                    }
                    Err(err) => {
                        let _ = reply.send(Err(InvokeError::Internal(format!(
                            "function actor failed to start: {err}"
                        ))));
                        return;
                    }
                }
            }
        };
        let msg = FunctionMsg::Invoke {
            invocation,
            model,
            adapters,
            n_ctx: config.n_ctx,
            pool,
            reply,
        };
        if let Err(ractor::MessagingErr::SendErr(FunctionMsg::Invoke { reply, .. })) =
            actor.cast(msg)
        {
            let _ = reply.send(Err(InvokeError::Internal("function actor stopped".into())));
        }
    }
}
