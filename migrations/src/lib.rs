//! Database migrations, run at start-up and by `genrt migrate`. Written with sea-query's
//! schema builder so that the same migration runs on SQLite and Postgres.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_initial;
mod m20261128_000002_tenancy;
mod m20261130_000003_trigger_receipts;
mod m20261130_000004_nodes;
mod m20261130_000005_cached_prompt_tokens;
mod m20261201_000006_model_registry;
mod m20261201_000007_model_quantization;
mod m20261201_000008_private_models;
mod m20261201_000009_adapters;
mod m20261201_000010_releases;
mod m20261202_000011_model_attempt;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_tenancy::Migration),
            Box::new(m20261130_000003_trigger_receipts::Migration),
            Box::new(m20261130_000004_nodes::Migration),
            Box::new(m20261130_000005_cached_prompt_tokens::Migration),
            Box::new(m20261201_000006_model_registry::Migration),
            Box::new(m20261201_000007_model_quantization::Migration),
            Box::new(m20261201_000008_private_models::Migration),
            Box::new(m20261201_000009_adapters::Migration),
            Box::new(m20261201_000010_releases::Migration),
            Box::new(m20261202_000011_model_attempt::Migration),
        ]
    }
}
