//! What the nodes of one deployment tell each other through the database: who is alive
//! (heartbeats), and which keys were revoked and tenants changed since a moment.

use chrono::{DateTime, Utc};
use genrt_functions::TenantId;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, Set};

use super::entities::{api_key, node, tenant};
use super::{ApiKeyRow, Store};

impl Store {
    /// Records that `id` is alive now (and since `started_at`).
    pub async fn node_heartbeat(&self, id: &str, started_at: DateTime<Utc>) -> Result<(), DbErr> {
        let row = node::ActiveModel {
            id: Set(id.to_owned()),
            started_at: Set(started_at),
            heartbeat_at: Set(Utc::now()),
        };
        node::Entity::insert(row)
            .on_conflict(
                OnConflict::column(node::Column::Id)
                    .update_column(node::Column::HeartbeatAt)
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map(|_| ())
    }

    /// Nodes whose last heartbeat is after `since`.
    pub async fn live_nodes(&self, since: DateTime<Utc>) -> Result<u64, DbErr> {
        node::Entity::find()
            .filter(node::Column::HeartbeatAt.gt(since))
            .count(&self.db)
            .await
    }

    /// A node leaving says so, so that the others take its share at once. Also drops rows
    /// of nodes dead for long, which nothing else would.
    pub async fn remove_node(&self, id: &str, dead_before: DateTime<Utc>) -> Result<(), DbErr> {
        node::Entity::delete_many()
            .filter(
                node::Column::Id
                    .eq(id)
                    .or(node::Column::HeartbeatAt.lt(dead_before)),
            )
            .exec(&self.db)
            .await
            .map(|_| ())
    }

    pub async fn keys_revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<ApiKeyRow>, DbErr> {
        api_key::Entity::find()
            .filter(api_key::Column::RevokedAt.gt(since))
            .all(&self.db)
            .await
    }

    pub async fn tenants_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<TenantId>, DbErr> {
        let rows = tenant::Entity::find()
            .filter(tenant::Column::UpdatedAt.gt(since))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| TenantId::parse(&r.id).ok())
            .collect())
    }
}
