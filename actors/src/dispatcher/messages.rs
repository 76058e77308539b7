//! What the dispatcher accepts.

use genrt_functions::{FunctionName, TenantId};
use ractor::{ActorId, RpcReplyPort};

use super::state::FunctionKey;
use crate::{Invocation, InvocationOutcome, InvokeError};

pub(crate) enum DispatcherMsg {
    Invoke(
        Invocation,
        RpcReplyPort<Result<InvocationOutcome, InvokeError>>,
    ),
    /// A function actor has been idle for its timeout and asks to be retired.
    FunctionIdle(FunctionKey, ActorId),
    /// Versions of a function that currently have a running actor.
    ActiveVersions(TenantId, FunctionName, RpcReplyPort<Vec<u32>>),
}
