//! Wire types of the HTTP API, documented for OpenAPI, and their hand-written conversions to
//! and from the domain types. Unknown fields are refused so that a typo is an error, not a
//! silently ignored setting.

mod evaluate;
mod functions;
mod invoke;
mod models;
mod params;
mod releases;

pub use crate::records::*;
pub use evaluate::*;
pub use functions::*;
pub use invoke::*;
pub use models::*;
pub use params::*;
pub use releases::*;
