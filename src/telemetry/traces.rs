//! Traces: the tracing subscriber, OpenTelemetry export over OTLP/HTTP, and W3C
//! `traceparent` continuation across actors, the outbox and Kafka.
//!
//! One subscriber, two layers with their own filters:
//! - the log layer (pretty for development, JSON with `trace_id`/`span_id` for
//!   production) filtered by `telemetry.log_level`;
//! - when `telemetry.otlp_endpoint` is set, the OpenTelemetry layer, which also takes
//!   the DEBUG-level spans of the actors, the group commit and the outbox relay.
//!
//! The internal spans are DEBUG on purpose: with no endpoint configured and the default
//! log level, no layer wants them, so `tracing` disables their callsites once and the
//! hot path pays one cached branch per span, nothing more. Only the request span is INFO.
//!
//! A trace crosses process boundaries as a W3C `traceparent` string: the request's own
//! one (caller's trace id, this server's request span id) is stored with every event in
//! the outbox and sent as a Kafka header. [`continue_trace`] makes a span the child of
//! such a stored string; the outbox relay and the Kafka consumers call it.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetrySpanExt, OtelData};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Whether spans go to an OpenTelemetry exporter; read on every continuation, so a
/// server without an endpoint never parses a `traceparent` for tracing.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Which spans the OpenTelemetry layer takes: every Emporium span down to DEBUG
/// (actor messages, group commits, outbox publishes), INFO from the libraries.
const EXPORT_FILTER: &str = "info,emporium=debug";

/// Whether this process exports spans (an OTLP endpoint was configured and installed).
pub fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What [`init`] needs (a subset of `[telemetry]`, so tests can pass their own).
#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub log_format: String,
    pub log_level: String,
    pub otlp_endpoint: String,
    /// How long finished spans wait to be batched into one export request.
    pub export_delay: Duration,
}

/// Keeps the exporter alive; flushes what is buffered when dropped (end of `main`).
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now (tests, shutdown).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                eprintln!("trace export flush failed: {e}");
            }
        }
    }

    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// The OTLP/HTTP traces URL for a configured endpoint: a collector base URL
/// (`http://otel-collector:4318`) gets the standard `/v1/traces` path.
pub(crate) fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

fn exporter_provider(
    endpoint: &str,
    delay: Duration,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()?;
    // The batch processor exports from its own thread: a slow or absent collector
    // never blocks a request; when its queue is full, spans are dropped, not waited for.
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(delay).build())
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("emporium")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Installs the global subscriber. A second call in the same process (tests that
/// start several apps) keeps the first subscriber and exports nothing more.
pub fn init(settings: &TraceSettings) -> Telemetry {
    let json = settings.log_format == "json";
    let provider = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        match exporter_provider(&settings.otlp_endpoint, settings.export_delay) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!(
                    "telemetry.otlp_endpoint {:?} unusable, traces not exported: {e}",
                    settings.otlp_endpoint
                );
                None
            }
        }
    };
    // Every layer carries its own filter: a layer without one would be interested in
    // every callsite and switch the DEBUG spans on for all (and their cost with them).
    let log_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let mut layers: Vec<Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>> = Vec::new();
    if json {
        layers.push(json_log_layer(std::io::stderr, log_filter()));
        // Without an exporter, JSON logs still carry the request's trace id (from its
        // traceparent), so log lines can be joined with the caller's traces.
        if provider.is_none() {
            layers.push(RequestIds.with_filter(log_filter()).boxed());
        }
    } else {
        layers.push(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log_filter())
                .boxed(),
        );
    }
    if let Some(p) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("emporium"))
                .with_filter(EnvFilter::new(EXPORT_FILTER))
                .boxed(),
        );
    }
    let installed = tracing_subscriber::registry().with(layers).try_init().is_ok();
    if installed && provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

/// JSON log lines (one object each) with `trace_id` and `span_id` at the top level.
fn json_log_layer<W>(writer: W, filter: EnvFilter) -> Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .event_format(WithTraceIds(fmt::format().json().with_current_span(true)))
        .with_writer(writer)
        .with_filter(filter)
        .boxed()
}

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`).
/// Accepts exactly what [`super::context::valid_traceparent`] accepts.
pub(crate) fn parse_traceparent(value: &str) -> Option<SpanContext> {
    if !super::context::valid_traceparent(value) {
        return None;
    }
    let mut parts = value.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if version == "ff" || u8::from_str_radix(version, 16).is_err() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// Makes `span` a child of the span a stored `traceparent` names (an event's, a Kafka
/// header's). Call it before the span is first entered. A no-op when traces are not
/// exported or the value is not a valid traceparent.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if !EXPORTING.load(Ordering::Relaxed) || span.is_disabled() {
        return;
    }
    if let Some(remote) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The `traceparent` naming `span` itself, when traces are exported (else `None`):
/// what a request stores with its events so their consumers become its children.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) || span.is_disabled() {
        return None;
    }
    let context = span.context();
    let sc = context.span().span_context().clone();
    sc.is_valid()
        .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Trace and span id of a span when no exporter assigns them: taken from the
/// `traceparent` field of the request span and inherited by its children.
#[derive(Clone)]
struct Ids {
    trace_id: String,
    span_id: String,
}

/// Records [`Ids`] for JSON logs when OpenTelemetry is off (see [`init`]).
struct RequestIds;

impl<S> Layer<S> for RequestIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut found = TraceparentField(None);
        attrs.record(&mut found);
        let ids = found
            .0
            .and_then(|tp| {
                let sc = parse_traceparent(&tp)?;
                Some(Ids {
                    trace_id: sc.trace_id().to_string(),
                    span_id: sc.span_id().to_string(),
                })
            })
            .or_else(|| span.parent()?.extensions().get::<Ids>().cloned());
        if let Some(ids) = ids {
            span.extensions_mut().insert(ids);
        }
    }
}

struct TraceparentField(Option<String>);

impl tracing::field::Visit for TraceparentField {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "traceparent" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "traceparent" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// The JSON log format plus top-level `trace_id` and `span_id` of the current span
/// (OpenTelemetry's ids when exporting, else the request's [`Ids`]).
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|span| {
            let ext = span.extensions();
            if let Some(otel) = ext.get::<OtelData>() {
                Some((otel.trace_id()?.to_string(), otel.span_id()?.to_string()))
            } else {
                ext.get::<Ids>().map(|ids| (ids.trace_id.clone(), ids.span_id.clone()))
            }
        });
        // The inner format writes one JSON object and a newline; the ids join that object.
        if let (Some((trace_id, span_id)), Some(body)) = (ids, line.strip_suffix("}\n")) {
            let mut patched = String::with_capacity(line.len() + 80);
            patched.push_str(body);
            let _ = writeln!(patched, ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}");
            line = patched;
        }
        writer.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_accepts_w3c_and_refuses_the_rest() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn json_log_lines_carry_the_request_trace_and_span_ids() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(vec![
            json_log_layer(move || sink.clone(), EnvFilter::new("info")),
            RequestIds.with_filter(EnvFilter::new("info")).boxed(),
        ]);
        tracing::subscriber::with_default(subscriber, || {
            let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let request = tracing::info_span!("http_request", traceparent = tp);
            let _in_request = request.enter();
            let inner = tracing::info_span!("inner");
            inner.in_scope(|| tracing::info!(order_id = "o-1", "inside"));
            tracing::info!("outside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
            assert_eq!(line["span_id"], "00f067aa0ba902b7", "{line}");
        }
        assert_eq!(lines[0]["fields"]["order_id"], "o-1");
        assert_eq!(lines[0]["span"]["name"], "inner");
    }

    #[test]
    fn endpoint_gets_the_standard_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
