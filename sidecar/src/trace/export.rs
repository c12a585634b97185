//! The span pipeline: the SDK provider, a bounded queue its processor fills from the request
//! path, and one task that ships the queue to the OTLP exporter in batches.
//!
//! Written here rather than with the SDK's `BatchSpanProcessor` because the proxy must count
//! what it drops (`lanemesh_trace_spans_total{result="dropped"}`) and the SDK's processor only
//! logs it at shutdown; the export itself is the SDK's OTLP exporter.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::TraceSettings;
use super::span::RequestTracer;
use crate::metrics::{ProxyMetrics, SpanResult};

/// Spans sent to the exporter in one call at most.
const MAX_BATCH: usize = 512;

/// Why the span pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP exporter for {endpoint}: {source}")]
pub struct PipelineError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Starts span pipelines.
#[derive(Debug)]
pub struct Pipeline;

impl Pipeline {
    /// Builds the OTLP/gRPC exporter for `settings` and starts the export task on the current
    /// runtime. `resource`: what every span is from (`service.name`, pod, namespace).
    pub fn start(
        settings: &TraceSettings,
        resource: Vec<KeyValue>,
        metrics: Arc<ProxyMetrics>,
    ) -> Result<(RequestTracer, ExportTask), PipelineError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|source| PipelineError {
                endpoint: settings.endpoint.clone(),
                source,
            })?;
        Ok(Self::with_exporter(settings, resource, metrics, exporter))
    }

    /// The pipeline with any exporter.
    pub fn with_exporter<E: SpanExporter + 'static>(
        settings: &TraceSettings,
        resource: Vec<KeyValue>,
        metrics: Arc<ProxyMetrics>,
        mut exporter: E,
    ) -> (RequestTracer, ExportTask) {
        let resource = Resource::builder().with_attributes(resource).build();
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(settings.queue);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor {
                queue: tx,
                metrics: Arc::clone(&metrics),
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling,
            ))))
            .with_resource(resource)
            .build();
        let tracer = RequestTracer::new(provider.tracer("lanemesh"));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(rx, exporter, settings.batch_delay, metrics, stopped));
        (
            tracer,
            ExportTask {
                stop,
                task,
                _provider: provider,
            },
        )
    }
}

/// The running export; [`ExportTask::finish`] ships what is queued and stops it.
#[derive(Debug)]
pub struct ExportTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// Kept so the provider's shutdown (on its last drop) happens after the final export.
    _provider: SdkTracerProvider,
}

impl ExportTask {
    /// Exports the spans queued so far, waiting at most `within`.
    pub async fn finish(self, within: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            tracing::warn!(
                ?within,
                "span export did not finish; remaining spans dropped"
            );
            task.abort();
        }
    }
}

/// Hands ended spans to the export task without waiting: a full queue drops the span.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<ProxyMetrics>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.metrics.record_spans(SpanResult::Dropped, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Exports batches until stopped: a batch is what arrived within `delay` of its first span (up
/// to [`MAX_BATCH`]). On stop, what is queued is exported once more.
async fn run<E: SpanExporter>(
    mut queue: mpsc::Receiver<SpanData>,
    exporter: E,
    delay: Duration,
    metrics: Arc<ProxyMetrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let stopping = tokio::select! {
            n = queue.recv_many(&mut batch, MAX_BATCH) => n == 0,
            _ = &mut stop => true,
        };
        if stopping {
            while let Ok(span) = queue.try_recv() {
                batch.push(span);
                if batch.len() == MAX_BATCH {
                    export(&exporter, &mut batch, &metrics).await;
                }
            }
            export(&exporter, &mut batch, &metrics).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + delay;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        export(&exporter, &mut batch, &metrics).await;
    }
}

async fn export<E: SpanExporter>(exporter: &E, batch: &mut Vec<SpanData>, metrics: &ProxyMetrics) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
    let n = spans.len() as u64;
    match exporter.export(spans).await {
        Ok(()) => metrics.record_spans(SpanResult::Exported, n),
        Err(error) => {
            tracing::debug!(%error, spans = n, "span export failed");
            metrics.record_spans(SpanResult::ExportFailed, n);
        }
    }
}
