//! An OTLP/HTTP receiver for tests: a real HTTP server (actix-web) on a free loopback port
//! that accepts `POST /v1/traces` and `POST /v1/metrics` with protobuf bodies, decodes them
//! with the collector's own message types (`opentelemetry-proto`), and keeps every request, so
//! that a test can inspect exactly what an exporter sent over the wire.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    handle: ServerHandle,
}

/// A span with the `service.name` of the resource it came with.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        attr(&self.span.attributes, key)
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(v) => Some(*v),
            _ => None,
        }
    }

    pub fn double_attr(&self, key: &str) -> Option<f64> {
        match self.attr(key)? {
            any_value::Value::DoubleValue(v) => Some(*v),
            _ => None,
        }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OtlpReceiver {
    /// Listens on `127.0.0.1:0`. Must be called inside a tokio runtime.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = web::Data::from(Arc::clone(&received));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::default().limit(64 << 20))
                .route("/v1/traces", web::post().to(traces))
                .route("/v1/metrics", web::post().to(metrics))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the OTLP receiver");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            addr,
            received,
            handle,
        }
    }

    /// The base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let received = self.received.lock().unwrap();
        let mut out = Vec::new();
        for request in &received.traces {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name"))
                    .and_then(|v| match v {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The latest export of each metric (exports are cumulative, so the latest holds all).
    pub fn metric(&self, name: &str) -> Option<Metric> {
        let received = self.received.lock().unwrap();
        received
            .metrics
            .iter()
            .rev()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .find(|m| m.name == name)
            .cloned()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn traces(data: web::Data<Mutex<Received>>, body: web::Bytes) -> HttpResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            data.lock().unwrap().traces.push(request);
            protobuf(ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(err) => HttpResponse::BadRequest().body(err.to_string()),
    }
}

async fn metrics(data: web::Data<Mutex<Received>>, body: web::Bytes) -> HttpResponse {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => {
            data.lock().unwrap().metrics.push(request);
            protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
        }
        Err(err) => HttpResponse::BadRequest().body(err.to_string()),
    }
}

fn protobuf(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(body)
}
