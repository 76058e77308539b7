//! One invocation that runs now: its id, its span (opened with its final mode), and how it is
//! recorded and counted whichever way it ends.

use std::time::SystemTime;

use genrt_actors::{InvocationId, InvocationOutcome};
use genrt_functions::{FunctionName, TenantId};

use super::record::{self, RowOf, Status};
use super::{Completed, Mode, Shared};
use crate::error::ApiError;
use crate::store::InvocationRow;
use crate::telemetry::{InFlight, InvocationLabels};

pub(crate) struct Call {
    pub(crate) id: InvocationId,
    tenant: TenantId,
    name: FunctionName,
    version: u32,
    via: super::Via,
    mode: Mode,
    row: InvocationRow,
    /// The `Idempotency-Key` this call claimed, released if the request is refused.
    key: Option<String>,
    /// The dispatch span: a child of the caller's, parent of the actor tree's phases.
    pub(crate) span: tracing::Span,
    opened: SystemTime,
    _in_flight: InFlight,
}

impl Call {
    pub(crate) fn new(
        shared: &Shared,
        mode: Mode,
        function: &genrt_actors::DeployedFunction,
        id: InvocationId,
        input: &serde_json::Value,
        key: Option<String>,
        via: &super::Via,
    ) -> Self {
        let labels = InvocationLabels {
            tenant: function.tenant.as_str().to_owned(),
            function: function.name.as_str().to_owned(),
            version: function.version,
            mode: mode.as_str(),
        };
        let span = crate::telemetry::invocation_span(&labels, id.0);
        let row = record::new_row(
            RowOf {
                id: id.0,
                tenant: &function.tenant,
                function: &function.name,
                version: function.version,
                input,
                mode,
                via,
            },
            Status::Running,
        );
        Self {
            id,
            tenant: function.tenant.clone(),
            name: function.name.clone(),
            version: function.version,
            via: via.clone(),
            mode,
            row,
            key,
            span,
            opened: SystemTime::now(),
            _in_flight: shared.metrics.in_flight(),
        }
    }

    /// The resolved sampling parameters, as the GenAI conventions' request attributes.
    pub(crate) fn request_params(&self, p: &genrt_functions::SamplingParams) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        self.span
            .set_attribute("gen_ai.request.max_tokens", i64::from(p.max_tokens));
        self.span
            .set_attribute("gen_ai.request.temperature", f64::from(p.temperature));
        self.span
            .set_attribute("gen_ai.request.top_p", f64::from(p.top_p));
        self.span
            .set_attribute("gen_ai.request.top_k", i64::from(p.top_k));
        if let Some(seed) = p.seed {
            self.span
                .set_attribute("gen_ai.request.seed", i64::from(seed));
        }
    }

    fn labels(&self) -> InvocationLabels {
        InvocationLabels {
            tenant: self.tenant.as_str().to_owned(),
            function: self.name.as_str().to_owned(),
            version: self.version,
            mode: self.mode.as_str(),
        }
    }

    /// Records the outcome, counts its tokens against the tenant's budget, and converts it.
    /// The record is handed to the write-behind recorder before answering, so the returned id
    /// can be read back at once. Requests refused as invalid leave nothing behind (and free
    /// their idempotency key); failures of accepted work are recorded.
    pub(crate) async fn complete(
        self,
        shared: &Shared,
        result: Result<InvocationOutcome, ApiError>,
    ) -> Result<Completed, ApiError> {
        self.counted(shared, result.as_ref());
        let mut row = self.row;
        match result {
            Ok(outcome) => {
                record::succeeded(&mut row, &outcome);
                shared.records.record(row).await;
                Ok(Completed {
                    id: self.id,
                    function: self.name,
                    version: self.version,
                    via: self.via,
                    outcome,
                })
            }
            Err(err) => {
                if err.code.status().is_server_error() {
                    record::ended(&mut row, Status::Failed, err.code.as_str(), &err.message);
                    shared.records.record(row).await;
                } else if let Some(key) = &self.key {
                    // Refused, nothing accepted: the key may be used again for a fixed request.
                    if let Err(e) = shared
                        .store
                        .release_idempotency_key(self.tenant.as_str(), key)
                        .await
                    {
                        tracing::warn!(error = %e, "releasing an idempotency key failed");
                    }
                }
                Err(err)
            }
        }
    }

    /// A queued run's end, whose row the queue writes with its lease: only counted, traced
    /// and charged to the tenant here.
    pub(crate) fn finish_queued(
        self,
        shared: &Shared,
        result: Result<&InvocationOutcome, &ApiError>,
    ) {
        self.counted(shared, result);
    }

    /// The outcome's metrics and span, and its tokens charged to the tenant's budget: the same
    /// for every end, whoever writes the row.
    fn counted(&self, shared: &Shared, result: Result<&InvocationOutcome, &ApiError>) {
        crate::telemetry::record_outcome(
            &shared.metrics,
            &self.span,
            self.opened,
            &self.labels(),
            result.map_err(|e| e.code.as_str()),
        );
        if let Ok(o) = result {
            shared.tenancy.record_usage(
                &self.tenant,
                u64::from(o.usage.prompt_tokens + o.usage.completion_tokens),
            );
        }
    }

    /// The caller left (a closed stream): recorded as cancelled.
    pub(crate) async fn cancelled(self, shared: &Shared) {
        let mut row = self.row;
        record::ended(
            &mut row,
            Status::Cancelled,
            "cancelled",
            "the client closed the stream",
        );
        shared.records.record(row).await;
    }
}
