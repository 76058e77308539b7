//! sea-orm entities, one module per table. The schema itself is in the migrations crate.

pub mod alias_event;
pub mod api_key;
pub mod batch;
pub mod disabled_endpoint;
pub mod function;
pub mod function_alias;
pub mod function_version;
pub mod idempotency_key;
pub mod invocation;
pub mod model;
pub mod node;
pub mod tenant;
pub mod trigger;
pub mod trigger_receipt;
pub mod version_score;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_secret;
