//! The genrt runtime: configuration, the HTTP API (actix-web), authentication, persistence
//! (sea-orm on SQLite or Postgres) and the response cache, around the actor tree.
//!
//! This is the only crate that knows HTTP, SQL and JWT.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod queue;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod webhooks;

pub use app::{start, AppState, RunningServer, StartError};
pub use config::Config;
