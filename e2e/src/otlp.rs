//! An OTLP/gRPC trace receiver: the collector's published `TraceService`, keeping every span it
//! receives (flattened, with its resource's `service.name`) for tests to inspect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the span's resource.
    pub service: String,
    /// Every resource attribute, as text.
    pub resource: BTreeMap<String, String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, ...
    pub kind: &'static str,
    /// Every attribute, as text (`true`, `200`, ...).
    pub attributes: BTreeMap<String, String>,
    /// Names of the span's events.
    pub events: Vec<String>,
    /// `unset`, `ok` or `error`.
    pub status: &'static str,
}

impl ReceivedSpan {
    /// The attribute `key`, `""` when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Answer every export with this status instead (a broken collector).
    failing: Mutex<Option<tonic::Code>>,
}

/// The service handle tonic owns; the receiver keeps another.
#[derive(Debug, Clone)]
struct Service(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(code) = *self
            .0
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Err(tonic::Status::new(code, "receiver told to fail"));
        }
        let mut flat = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    flat.push(ReceivedSpan {
                        service: service.clone(),
                        resource: resource.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: match span.kind {
                            1 => "internal",
                            2 => "server",
                            3 => "client",
                            4 => "producer",
                            5 => "consumer",
                            _ => "unspecified",
                        },
                        name: span.name,
                        attributes: attributes(&span.attributes),
                        events: span.events.into_iter().map(|e| e.name).collect(),
                        status: match span.status.map(|s| s.code) {
                            Some(1) => "ok",
                            Some(2) => "error",
                            _ => "unset",
                        },
                    });
                }
            }
        }
        self.0
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(flat);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The spans of one trace as a chain from its root (the span whose parent is not in the
/// trace), each followed by its child; stops where a span has no child or several.
pub fn chain(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut roots = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()));
    let (Some(mut at), None) = (roots.next(), roots.next()) else {
        return Vec::new();
    };
    let mut out = vec![at];
    loop {
        let mut children = spans.iter().filter(|s| s.parent_span_id == at.span_id);
        match (children.next(), children.next()) {
            (Some(child), None) => {
                out.push(child);
                at = child;
            }
            _ => return out,
        }
    }
}

/// The spans as an indented tree, one line per span: name, pod, lane and the rule that
/// decided it, endpoint, status.
pub fn tree(spans: &[ReceivedSpan]) -> String {
    fn walk(spans: &[ReceivedSpan], at: &ReceivedSpan, depth: usize, out: &mut String) {
        let mut line = format!(
            "{}{} [{}] {} lane={}",
            "  ".repeat(depth),
            at.name,
            at.kind,
            at.resource.get("k8s.pod.name").map_or("", String::as_str),
            at.attr("lanemesh.lane"),
        );
        for (key, label) in [
            ("lanemesh.lane.rule", "rule"),
            ("lanemesh.trace.parent", "parent"),
            ("network.peer.address", "endpoint"),
            ("http.response.status_code", "status"),
        ] {
            let value = at.attr(key);
            if !value.is_empty() {
                line.push_str(&format!(" {label}={value}"));
            }
        }
        out.push_str(&line);
        out.push('\n');
        for child in spans.iter().filter(|s| s.parent_span_id == at.span_id) {
            walk(spans, child, depth + 1, out);
        }
    }
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    for root in spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
    {
        walk(spans, root, 0, &mut out);
    }
    out.trim_end().to_owned()
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Serves OTLP/gRPC on `addr` (port 0: any free one).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received::default());
        let service = TraceServiceServer::new(Service(Arc::clone(&received)));
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "OTLP receiver stopped");
            }
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint to give an OTLP exporter: `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers every export with `code` from now on (`None`: accept again).
    pub fn fail_with(&self, code: Option<tonic::Code>) {
        *self
            .received
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = code;
    }

    /// Waits up to `within` until `done` holds for the spans received; the spans either way.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
