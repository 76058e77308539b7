//! sea-orm entities, one module per table. The schema itself is in the migrations crate.

pub mod function;
pub mod function_version;
pub mod invocation;
pub mod model;
pub mod tenant;
