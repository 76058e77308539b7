//! Traces and metrics. The OpenTelemetry SDK is the one API both are recorded through:
//! `tracing` spans reach it through `tracing-opentelemetry` (binary only, since a tracing
//! subscriber is process-global), and every metric is an OpenTelemetry instrument of the
//! node's [`Metrics`], read by two readers: the Prometheus exporter behind `GET /metrics` and,
//! when an OTLP endpoint is configured, a periodic OTLP reader.
//!
//! Configuration follows the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (unset: no
//! export at all), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`),
//! `OTEL_SERVICE_NAME`, `OTEL_METRIC_EXPORT_INTERVAL`; each overrides its `[telemetry]` key.

mod export;
pub mod gpu;
mod metrics;

mod spans;

pub use export::{init_tracing, TracingGuard};
pub use metrics::{InFlight, Metrics, MetricsError, ModelSnapshot};

pub use spans::{
    current_traceparent, invocation_span, link_to_traceparent, parent_from_traceparent,
    record_outcome, rename, traceparent_of, InvocationLabels,
};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the observed instruments' snapshot is refreshed between scrapes, for the OTLP
/// reader (a scrape of `/metrics` refreshes it first anyway).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Keeps the snapshot of the actor tree and the queue fresh; aborted at shutdown.
pub async fn sample(
    metrics: Arc<Metrics>,
    tree: Arc<genrt_actors::ActorTree>,
    store: crate::store::Store,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        metrics.refresh(&tree, &store).await;
    }
}

/// OTLP over gRPC brings tonic and a second HTTP/2 stack into the build, for deployments whose
/// collector does not take OTLP/HTTP (every current collector does): it is the `otlp-grpc`
/// cargo feature, off by default, so that the common build stays smaller and faster.
pub(crate) const GRPC_NOT_BUILT: &str = "telemetry.otlp_protocol `grpc` needs a build with the \
    `otlp-grpc` feature (cargo build --release --features genrt-runtime/otlp-grpc); \
    `http/protobuf` works in every build";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// `[telemetry]`: where traces and metrics go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where `GET /metrics` (Prometheus text format) is served: its own listener, never the
    /// API's, because the series name tenants and functions. Loopback by default; empty
    /// turns it off. Any other address needs `metrics_token`.
    pub metrics_listen: String,
    /// A bearer token scrapers must send (`Authorization: Bearer ...`), at least 16 bytes.
    /// Required when `metrics_listen` is not a loopback address.
    pub metrics_token: Option<String>,
    /// Distinct tenants named in metric labels; later ones are counted under `other`, so a
    /// flood of new tenants cannot grow the series without limit.
    pub max_tenant_labels: usize,
    /// Distinct (tenant, function) pairs named in metric labels; later ones under `other`.
    pub max_function_labels: usize,
    /// Distinct (tenant, function, version) triples named in metric labels (the
    /// `genrt.function.version` label, so that a canary's numbers can be read apart); later
    /// ones under `other`.
    pub max_version_labels: usize,
    /// Base URL of an OTLP collector (`http://collector:4318` for HTTP, `:4317` for gRPC).
    /// None: nothing is exported.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Milliseconds between two OTLP metric exports.
    pub metric_export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_listen: "127.0.0.1:9464".into(),
            metrics_token: None,
            max_tenant_labels: 200,
            max_function_labels: 2000,
            max_version_labels: 8000,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            service_name: "genrt".into(),
            metric_export_interval_ms: 60_000,
        }
    }
}

impl TelemetryConfig {
    /// Applies the standard `OTEL_*` variables, which take precedence over the file.
    pub fn apply_otel_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(endpoint) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.otlp_endpoint = Some(endpoint);
        }
        if let Some(protocol) = set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            self.otlp_protocol = match protocol.trim() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                other => {
                    return Err(format!(
                        "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported (grpc or http/protobuf)"
                    ))
                }
            };
        }
        if let Some(name) = set("OTEL_SERVICE_NAME") {
            self.service_name = name;
        }
        if let Some(ms) = set("OTEL_METRIC_EXPORT_INTERVAL") {
            self.metric_export_interval_ms = ms
                .trim()
                .parse()
                .map_err(|_| format!("OTEL_METRIC_EXPORT_INTERVAL `{ms}` is not milliseconds"))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let url = url::Url::parse(endpoint)
                .map_err(|e| format!("telemetry.otlp_endpoint `{endpoint}`: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "telemetry.otlp_endpoint `{endpoint}` must be an http or https URL"
                ));
            }
        }
        if self.otlp_endpoint.is_some()
            && self.otlp_protocol == OtlpProtocol::Grpc
            && !cfg!(feature = "otlp-grpc")
        {
            return Err(GRPC_NOT_BUILT.into());
        }
        if self.metric_export_interval_ms < 100 {
            return Err("telemetry.metric_export_interval_ms must be at least 100".into());
        }
        if let Some(addr) = self.metrics_addr()? {
            let token = self.metrics_token.as_deref().unwrap_or_default();
            if !token.is_empty() && token.len() < 16 {
                return Err("telemetry.metrics_token must be at least 16 bytes".into());
            }
            if !addr.ip().is_loopback() && token.is_empty() {
                return Err(format!(
                    "telemetry.metrics_listen `{addr}` is reachable from other machines: set \
                     telemetry.metrics_token (scrapers send it as a bearer token), or listen \
                     on 127.0.0.1"
                ));
            }
        }
        if self.max_tenant_labels == 0
            || self.max_function_labels == 0
            || self.max_version_labels == 0
        {
            return Err(
                "telemetry.max_tenant_labels, max_function_labels and max_version_labels must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// The metrics listener's address; `None` when metrics are not served.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let listen = self.metrics_listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            format!("telemetry.metrics_listen `{listen}` must be an IP address and port")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otel_variables_override_the_file() {
        let mut config = TelemetryConfig::default();
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
            "OTEL_SERVICE_NAME" => Some("edge".to_owned()),
            "OTEL_METRIC_EXPORT_INTERVAL" => Some("500".to_owned()),
            _ => None,
        };
        config.apply_otel_env(env).unwrap();
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(config.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(config.service_name, "edge");
        assert_eq!(config.metric_export_interval_ms, 500);
        // gRPC is accepted exactly when the build has it, and said so otherwise.
        match config.validate() {
            Ok(()) => {
                let built_with_grpc = cfg!(feature = "otlp-grpc");
                assert!(built_with_grpc, "gRPC accepted by a build without it");
            }
            Err(e) => assert!(
                !cfg!(feature = "otlp-grpc") && e.contains("otlp-grpc"),
                "{e}"
            ),
        }
        config.otlp_protocol = OtlpProtocol::HttpProtobuf;
        config.validate().unwrap();
    }

    #[test]
    fn unset_or_empty_variables_leave_export_off() {
        let mut config = TelemetryConfig::default();
        config
            .apply_otel_env(|k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(String::new))
            .unwrap();
        assert_eq!(config.otlp_endpoint, None);
        let bad = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_owned());
        assert!(TelemetryConfig::default().apply_otel_env(bad).is_err());
    }
}
