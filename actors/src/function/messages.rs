//! What a function actor accepts.

use genrt_functions::ModelId;
use ractor::{ActorRef, RpcReplyPort};

use crate::model_pool::PoolMsg;
use crate::{Invocation, InvocationOutcome, InvokeError};

#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is an `Invoke`: boxing it would cost an allocation per \
              invocation to shrink the rare small ones"
)]
pub(crate) enum FunctionMsg {
    /// Run the function once on the model the dispatcher chose.
    Invoke {
        invocation: Invocation,
        model: ModelId,
        /// The LoRA adapters the dispatcher resolved for this invocation.
        adapters: crate::engine::AdapterSet,
        n_ctx: u32,
        pool: ActorRef<PoolMsg>,
        reply: RpcReplyPort<Result<InvocationOutcome, InvokeError>>,
    },
    /// One forwarded invocation has been answered.
    Finished,
    /// Time to check whether this actor has been idle for its timeout.
    IdleCheck,
}
