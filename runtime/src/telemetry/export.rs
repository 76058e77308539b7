//! Building the OTLP exporters and installing the process's tracing subscriber.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{ExporterBuildError, Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::{OtlpProtocol, TelemetryConfig};

const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .build()
}

/// The per-signal URL of an OTLP/HTTP endpoint: the specification appends `v1/traces` or
/// `v1/metrics` to the base endpoint (the exporter does so only when it reads the variable
/// itself, and the endpoint here may come from the file).
fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

fn span_exporter(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, ExporterBuildError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match config.otlp_protocol {
        OtlpProtocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(BlockingHttpClient)
            .with_endpoint(signal_url(endpoint, "traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        #[cfg(feature = "otlp-grpc")]
        OtlpProtocol::Grpc => builder
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        #[cfg(not(feature = "otlp-grpc"))]
        OtlpProtocol::Grpc => Err(grpc_not_built()),
    }
}

/// Unreachable after `TelemetryConfig::validate`, which refuses gRPC in a build without it.
#[cfg(not(feature = "otlp-grpc"))]
fn grpc_not_built() -> ExporterBuildError {
    ExporterBuildError::InternalFailure(super::GRPC_NOT_BUILT.into())
}

/// The OTLP half of the metrics pipeline, when an endpoint is configured. Must be called
/// inside the Tokio runtime (the gRPC channel is bound to it).
pub(super) fn metric_reader(
    config: &TelemetryConfig,
) -> Result<Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>, ExporterBuildError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let builder = opentelemetry_otlp::MetricExporter::builder();
    let exporter = match config.otlp_protocol {
        OtlpProtocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(BlockingHttpClient)
            .with_endpoint(signal_url(endpoint, "metrics"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        #[cfg(feature = "otlp-grpc")]
        OtlpProtocol::Grpc => builder
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        #[cfg(not(feature = "otlp-grpc"))]
        OtlpProtocol::Grpc => return Err(grpc_not_built()),
    };
    Ok(Some(
        PeriodicReader::builder(exporter)
            .with_interval(Duration::from_millis(config.metric_export_interval_ms))
            .build(),
    ))
}

/// Owns the tracer provider; [`TracingGuard::shutdown`] exports what is still buffered.
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Flushes and stops span export. The SDK's processor blocks while it flushes, so this
    /// runs on a blocking thread.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(EXPORT_TIMEOUT + Duration::from_secs(1), done).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => tracing::warn!(error = %err, "flushing traces failed"),
                _ => tracing::warn!("flushing traces did not finish in time"),
            }
        }
    }
}

/// Installs the process's tracing subscriber: log lines to stderr filtered by `log_filter`,
/// and, when an OTLP endpoint is configured, genrt's own spans to OpenTelemetry. Only the
/// `genrt_*` targets are exported: the exporter's HTTP and gRPC clients log through `tracing`
/// too, and exporting their spans would feed the exporter its own traffic.
pub fn init_tracing(
    config: &TelemetryConfig,
    log_filter: EnvFilter,
) -> Result<TracingGuard, ExporterBuildError> {
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(
            SdkTracerProvider::builder()
                .with_resource(resource(config))
                .with_batch_exporter(span_exporter(config, endpoint)?)
                .build(),
        ),
        None => None,
    };
    // Colours only on a terminal: a log collector (`kubectl logs`, journald) would store the
    // escape codes as text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(log_filter);
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("genrt"))
            .with_filter(
                Targets::new()
                    .with_target("genrt_runtime", LevelFilter::INFO)
                    .with_target("genrt_actors", LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    if let Some(p) = &provider {
        // The spans recorded after the fact (queue, prefill, decode) use the global tracer.
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(TracingGuard { provider })
}

/// OTLP/HTTP through the reqwest version the rest of the runtime uses, in its blocking form:
/// the SDK's batch span processor and periodic metric reader export from threads of their own
/// outside any Tokio runtime, where only a blocking client works. (The exporter's built-in
/// blocking client would pull a second major version of reqwest into the build.) The client
/// lives for the whole process because a blocking reqwest client cannot be dropped inside an
/// async context, which the SDK's shutdown may be.
#[derive(Debug, Clone, Copy)]
struct BlockingHttpClient;

static BLOCKING_CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = match BLOCKING_CLIENT.get() {
            Some(client) => client,
            None => {
                let built = reqwest::blocking::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()?;
                BLOCKING_CLIENT.get_or_init(|| built)
            }
        };
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let response = client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let mut out = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        Ok(out.body(response.bytes()?)?)
    }
}
