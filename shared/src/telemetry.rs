//! Logging setup: JSON on Lambda, human-readable locally, and the request span. Log
//! lines carry ids and masked phone numbers only (see `domain::mask_phone`); never
//! content or secrets. Ids come from spans, not from each call: an HTTP request runs in
//! a `request` span (request id, route, tenant, message), a queue job in a `job` span
//! (its ids and the id of the request that accepted it).

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Crates whose debug and trace output carries whole requests, events or bodies (tokens,
/// passwords, message content): capped at these levels whatever `RUST_LOG` says. A
/// directive's target matches by prefix (`aws_sdk` covers every `aws_sdk_*` crate).
const CAPS: [&str; 13] = [
    "lambda_runtime=info",
    "lambda_http=info",
    "hyper=warn",
    "hyper_util=warn",
    "h2=warn",
    "reqwest=warn",
    "rustls=warn",
    "aws_smithy=warn",
    "aws_sdk=warn",
    "aws_config=warn",
    "aws_runtime=warn",
    "tower_http=info",
    "tower=info",
];

/// The log filter from a `RUST_LOG`-style spec of `target=level` directives and a bare
/// default level (`info` when absent or unreadable). The spec's own directives for a capped
/// crate (or a module of one, which would be more specific than the cap) are dropped, and
/// the [`CAPS`] added. A `Targets` filter, not an `EnvFilter`: the span and field
/// directives it cannot read (`kirim[request]=debug`) are never needed on Lambda, and it
/// keeps a regex engine out of the binary (issue #13, small functions).
pub fn env_filter(spec: Option<&str>) -> Targets {
    let capped = |directive: &str| {
        let target = directive
            .split(['=', '['])
            .next()
            .unwrap_or_default()
            .trim();
        CAPS.iter()
            .filter_map(|c| c.split('=').next())
            .any(|prefix| !target.is_empty() && target.starts_with(prefix))
    };
    let kept = spec.map(|s| {
        s.split(',')
            .filter(|d| !d.trim().is_empty() && !capped(d))
            .collect::<Vec<_>>()
            .join(",")
    });
    let mut filter = kept
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    for cap in CAPS {
        if let Some((target, level)) = cap.split_once('=') {
            if let Ok(level) = level.parse::<LevelFilter>() {
                filter = filter.with_target(target, level);
            }
        }
    }
    filter
}

fn filter_from_env() -> Targets {
    env_filter(std::env::var("RUST_LOG").ok().as_deref())
}

pub fn init_json() {
    let _ = tracing_subscriber::registry()
        .with(LazySpanFields::new(
            json_layer().fmt_fields(AppendJsonFields),
        ))
        .with(filter_from_env())
        .try_init();
}

/// Lambda's JSON lines, before their span fields' formatter is chosen (a test logs with the
/// same format and both formatters).
pub fn json_layer<S>() -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json, ()>,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        // Span fields (request id, tenant, message) ride on every line as `spans`.
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .without_time() // CloudWatch stamps each line
}

/// The JSON formatter's span fields, with each recorded field appended to the span's JSON
/// object instead of the object parsed and written again: `JsonFields::add_fields` parses
/// the span's fields into a map, adds the new ones and serialises it all again at every
/// record, and a webhook's request span records three ids (its tenant, message and wamid),
/// so a Lambda paid that three times a notification. Fields are formatted as `JsonFields`
/// formats them. The text differs only in order and, for a field recorded twice, in keeping
/// both; every line's `spans` entry is read back from it into a sorted map (the formatter's
/// own `serde_json::Value`, last value kept), so the lines logged are the same (a test holds
/// them equal).
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendJsonFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        tracing_subscriber::fmt::format::JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut new = String::new();
        tracing_subscriber::fmt::format::JsonFields::new().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut new),
            fields,
        )?;
        let (Some(old), Some(added)) = (
            current
                .fields
                .strip_suffix('}')
                .filter(|o| o.starts_with('{')),
            new.strip_prefix('{').filter(|n| n.ends_with('}')),
        ) else {
            // Nothing recorded yet (or, never seen, not an object): the new fields alone.
            current.fields = new;
            return Ok(());
        };
        if added == "}" {
            return Ok(());
        }
        let join = if old == "{" { "" } else { "," };
        let len = old.len();
        current.fields.truncate(len);
        current.fields.push_str(join);
        current.fields.push_str(added);
        Ok(())
    }
}

pub fn init_pretty() {
    use std::io::IsTerminal;
    // Colours for a terminal only: a log file or pipe gets plain text (and the colour
    // codes were ~2% of a webhook's CPU in local mode).
    let ansi = std::io::stdout().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(
            ansi.then(|| LazySpanFields::new(tracing_subscriber::fmt::layer().with_target(false))),
        )
        .with((!ansi).then_some(RoomForFields))
        .with((!ansi).then(|| {
            LazySpanFields::new(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(false)
                    .fmt_fields(PlainFields),
            )
        }))
        .with(filter_from_env())
        .try_init();
}

/// The text formatter's fields without colours, as its `DefaultFields` writes them with
/// colours off (`name=value`, separated by spaces; `message` and errors are handed to
/// `DefaultVisitor` itself, which escapes them), without painting each name and `=` in a
/// plain style first: that was a quarter of the instructions a request's span took in
/// local mode (BENCHMARKS.md "Webhook side by side").
struct PlainFields;

struct PlainVisitor<'a> {
    writer: tracing_subscriber::fmt::format::Writer<'a>,
    is_empty: bool,
    result: std::fmt::Result,
}

impl<'a> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'a>>
    for PlainFields
{
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: tracing_subscriber::fmt::format::Writer<'a>) -> Self::Visitor {
        PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

impl PlainVisitor<'_> {
    /// Writes `name=` and then the value with `value`, after a space if a field came before
    /// (log records' metadata, `log.*`, is left out: the formatter shows it elsewhere).
    fn write_field(
        &mut self,
        name: &str,
        value: impl FnOnce(&mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result,
    ) {
        // (Prefixes compared as arrays: `str::starts_with` and `strip_prefix` are calls
        // of their own at opt-level `z`, on every field of every span.)
        if self.result.is_err() || name.as_bytes().first_chunk() == Some(b"log.") {
            return;
        }
        let name = match name.as_bytes().first_chunk() {
            Some(b"r#") => name.get(2..).unwrap_or(name),
            _ => name,
        };
        if !self.is_empty {
            self.result = self.writer.write_char(' ');
        }
        self.is_empty = false;
        self.result = self
            .result
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| value(&mut self.writer));
    }

    /// Lets the formatter's own visitor write one field (those it escapes).
    fn delegate(
        &mut self,
        record: impl FnOnce(&mut tracing_subscriber::fmt::format::DefaultVisitor<'_>),
    ) {
        use tracing_subscriber::field::VisitOutput;
        if self.result.is_err() {
            return;
        }
        let mut v = tracing_subscriber::fmt::format::DefaultVisitor::new(
            self.writer.by_ref(),
            self.is_empty,
        );
        record(&mut v);
        self.result = v.finish();
        self.is_empty = false;
    }
}

impl tracing::field::Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.delegate(|v| v.record_str(field, value));
        } else if value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            // Printable ASCII without quotes or backslashes: what `{:?}` writes, quoted,
            // without going through the formatter (a request's route, on every request).
            self.write_field(field.name(), |w| {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if name == "message" {
            self.delegate(|v| v.record_debug(field, value));
            return;
        }
        // The name and `=` written as they are; only the value goes through `fmt`.
        self.write_field(name, |w| write!(w, "{value:?}"));
    }
}

impl tracing_subscriber::field::VisitOutput<std::fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl tracing_subscriber::field::VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

/// Gives each span's formatted fields room for all of them at once, before the text
/// formatter makes them (which it then leaves alone): its own string starts empty and grows
/// by doubling, several reallocations for a request's span as its ids are recorded
/// (BENCHMARKS.md "Webhook side by side"). The same text: formatted by the formatter's own
/// [`PlainFields`], with the defaults of `FormattedFields::new` (no colours, ANSI sanitising
/// on), which are the formatter's as configured in [`init_pretty`]: a change there must be
/// made here too.
struct RoomForFields;

/// Room for a request span's fields: its request id, method, route, tenant, message id and
/// a wamid come to about 200 bytes.
const SPAN_FIELDS_ROOM: usize = 256;

impl<S> tracing_subscriber::Layer<S> for RoomForFields
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        use tracing_subscriber::fmt::{FormatFields, FormattedFields};
        // A request span's fields wait for a line ([`LazySpanFields`]).
        if is_lazy_request(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if extensions
            .get_mut::<FormattedFields<PlainFields>>()
            .is_none()
        {
            let mut fields =
                FormattedFields::<PlainFields>::new(String::with_capacity(SPAN_FIELDS_ROOM));
            if PlainFields.format_fields(fields.as_writer(), attrs).is_ok() {
                extensions.insert(fields);
            }
        }
    }
}

tokio::task_local! {
    /// The HTTP request being served (set by the request-id layer): its id, and the
    /// values its span's fields get while they wait for a line.
    static REQUEST: RequestScope;
}

/// The target of the request span [`in_request`] makes when its fields wait for a line.
const REQUEST_TARGET: &str = "kirim::request";

/// Whether `meta` is a request span whose fields wait for a line ([`LazySpanFields`]).
#[inline(always)]
fn is_lazy_request(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == REQUEST_TARGET
}

/// A request's id, and its span's values until a line needs them formatted.
struct RequestScope {
    id: String,
    method: axum::http::Method,
    route: Option<&'static str>,
    /// The request span, when its fields wait for a line (a [`LazySpanFields`] formats
    /// them); `None` when the span got its values as it was made, or is disabled.
    span: Option<(tracing::span::Id, &'static tracing::Metadata<'static>)>,
    recorded: std::cell::RefCell<Recorded>,
}

/// The values recorded on a request span since it was made, kept until a line needs them,
/// in order (a field recorded twice is in it twice, as the formatters keep both): handed
/// to the formatter again then, text as its `{:?}` was (a recorded value is borrowed).
/// The texts share one string.
#[derive(Default)]
struct Recorded {
    text: String,
    values: Vec<(&'static str, Kept)>,
}

/// Room for the texts a request usually keeps: a wamid (about 60 bytes), a tenant and a
/// message id (26 each). Growing from empty took two reallocations a webhook.
const KEPT_TEXT_ROOM: usize = 160;

/// One recorded value; a text is `Recorded::text[start..end]`.
enum Kept {
    Str(usize, usize),
    /// A value's `{:?}` text (an id's `%` display; a recorded error's display, without
    /// the sources the text formatter would list after it).
    Text(usize, usize),
    U64(u64),
    I64(i64),
    Bool(bool),
    F64(f64),
}

impl Recorded {
    fn with_value<R>(&self, kept: &Kept, f: impl FnOnce(&dyn tracing::Value) -> R) -> R {
        let text = |a: usize, b: usize| self.text.get(a..b).unwrap_or_default();
        match *kept {
            Kept::Str(a, b) => f(&text(a, b)),
            Kept::Text(a, b) => f(&tracing::field::display(text(a, b))),
            Kept::U64(v) => f(&v),
            Kept::I64(v) => f(&v),
            Kept::Bool(v) => f(&v),
            Kept::F64(v) => f(&v),
        }
    }

    fn push_text(&mut self, name: &'static str, text: &str) {
        if self.text.capacity() == 0 {
            // Room for a request's usual ids at once (a wamid, a tenant, a message).
            self.text.reserve(KEPT_TEXT_ROOM);
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.values.push((name, Kept::Text(start, self.text.len())));
    }
}

/// Keeps each value recorded on a request span under `name`.
struct Capture<'a> {
    name: &'static str,
    into: &'a mut Recorded,
}

impl tracing::field::Visit for Capture<'_> {
    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let start = self.into.text.len();
        let _ = write!(self.into.text, "{value:?}");
        let end = self.into.text.len();
        self.into.values.push((self.name, Kept::Text(start, end)));
    }
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        let start = self.into.text.len();
        self.into.text.push_str(value);
        let end = self.into.text.len();
        self.into.values.push((self.name, Kept::Str(start, end)));
    }
    fn record_u64(&mut self, _: &tracing::field::Field, value: u64) {
        self.into.values.push((self.name, Kept::U64(value)));
    }
    fn record_i64(&mut self, _: &tracing::field::Field, value: i64) {
        self.into.values.push((self.name, Kept::I64(value)));
    }
    fn record_bool(&mut self, _: &tracing::field::Field, value: bool) {
        self.into.values.push((self.name, Kept::Bool(value)));
    }
    fn record_f64(&mut self, _: &tracing::field::Field, value: f64) {
        self.into.values.push((self.name, Kept::F64(value)));
    }
}

impl RequestScope {
    /// The kept values, to add to, if the request span is the current span and its fields
    /// wait for a line (else values are recorded as usual).
    fn waiting(&self) -> Option<std::cell::RefMut<'_, Recorded>> {
        let (span, _) = self.span.as_ref()?;
        let current = tracing::dispatcher::get_default(|d| d.current_span().id().cloned());
        if current.as_ref() != Some(span) {
            return None;
        }
        self.recorded.try_borrow_mut().ok()
    }

    fn capture(&self, values: &[(&'static str, &dyn tracing::Value)]) -> bool {
        let Some(mut recorded) = self.waiting() else {
            return false;
        };
        // `Value::record` hands its field back to the visitor, which keeps the name instead.
        let any = self
            .span
            .as_ref()
            .and_then(|(_, meta)| meta.fields().iter().next());
        if let Some(field) = any {
            for (name, value) in values {
                value.record(
                    &field,
                    &mut Capture {
                        name,
                        into: &mut recorded,
                    },
                );
            }
        }
        true
    }

    fn capture_texts(&self, values: &[(&'static str, &str)]) -> bool {
        let Some(mut recorded) = self.waiting() else {
            return false;
        };
        for (name, text) in values {
            recorded.push_text(name, text);
        }
        true
    }
}

/// Runs `fut` as the handling of request `id`: in a `request` span that carries the id
/// (and gets the route, tenant and message ids recorded as they become known; `route` is
/// given here when the caller knows it already), with the id readable through
/// [`request_id`] (so a queued job can carry it on). The raw path is not logged: it can
/// hold a phone number.
///
/// Where the log formatter is wrapped in [`LazySpanFields`] (Lambda's and local mode's),
/// the span's values are kept by the request's task and formatted only when a line in it
/// is logged: most requests log none, and formatting them as they were recorded was most
/// of what tracing cost a webhook (BENCHMARKS.md "Webhook side by side", stop 28). The
/// lines are the same.
pub fn in_request<F: std::future::Future>(
    id: String,
    method: axum::http::Method,
    route: Option<&'static str>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    use tracing::field::Empty;
    use tracing::Instrument;
    let lazy = tracing::dispatcher::get_default(|d| d.is::<LazyFieldsMarker>());
    let (span, waits) = if lazy {
        let span = tracing::info_span!(
            target: REQUEST_TARGET,
            "request",
            request_id = Empty,
            method = Empty,
            route = Empty,
            tenant_id = Empty,
            message_id = Empty,
            wamid = Empty,
        );
        let waits = span.id().zip(span.metadata());
        (span, waits)
    } else {
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %method.as_str(),
            route,
            tenant_id = Empty,
            message_id = Empty,
            // A webhook of one status records its wamid here (`service::webhook`).
            wamid = Empty,
        );
        (span, None)
    };
    let scope = RequestScope {
        id,
        method,
        route,
        span: waits,
        recorded: std::cell::RefCell::default(),
    };
    REQUEST.scope(scope, fut.instrument(span))
}

/// The id of the HTTP request this task serves, if any.
pub fn request_id() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok()
}

/// What a [`LazySpanFields`] answers to `Dispatch::is`: that request spans may wait.
struct LazyFieldsMarker;

static LAZY_FIELDS_MARKER: LazyFieldsMarker = LazyFieldsMarker;

/// A log formatter (`fmt::Layer`) whose request spans ([`in_request`]) get their fields
/// only when a line in them is logged: the values wait in the request's task
/// ([`record_all`] keeps them there), and before the first line in the span (and before
/// each later one, for values recorded since) they are handed to the formatter as if the
/// span had been made with them and recorded each in turn. Other spans are the
/// formatter's as usual. One per subscriber.
pub struct LazySpanFields<L> {
    inner: L,
}

impl<L> LazySpanFields<L> {
    pub fn new(inner: L) -> Self {
        Self { inner }
    }
}

/// How many of a request span's recorded values a [`LazySpanFields`] has handed on.
struct Replayed<L>(usize, std::marker::PhantomData<fn() -> L>);

impl<L> LazySpanFields<L> {
    /// Hands the request span `id`'s waiting values to the formatter.
    fn materialize<S>(
        &self,
        id: &tracing::span::Id,
        ctx: &tracing_subscriber::layer::Context<'_, S>,
    ) where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        L: tracing_subscriber::Layer<S> + 'static,
    {
        use tracing::field::Value;
        let Some(span) = ctx.span(id) else {
            return;
        };
        let meta = span.metadata();
        let done = span.extensions().get::<Replayed<L>>().map(|r| r.0);
        drop(span);
        let fields = meta.fields();
        let ours = REQUEST
            .try_with(|scope| {
                if scope.span.as_ref().map(|(s, _)| s) != Some(id) {
                    return false;
                }
                let start = match done {
                    Some(n) => n,
                    None => {
                        let (Some(f_id), Some(f_method), Some(f_route)) = (
                            fields.field("request_id"),
                            fields.field("method"),
                            fields.field("route"),
                        ) else {
                            return false;
                        };
                        let id_value = tracing::field::display(&scope.id);
                        let method_value = tracing::field::display(scope.method.as_str());
                        let values = [
                            (&f_id, Some(&id_value as &dyn Value)),
                            (&f_method, Some(&method_value as &dyn Value)),
                            (&f_route, scope.route.as_ref().map(|r| r as &dyn Value)),
                        ];
                        self.inner.on_new_span(
                            &tracing::span::Attributes::new(meta, &fields.value_set(&values)),
                            id,
                            ctx.clone(),
                        );
                        0
                    }
                };
                let Ok(recorded) = scope.recorded.try_borrow() else {
                    return true;
                };
                for (name, kept) in recorded.values.iter().skip(start) {
                    // A name the span does not have was not recorded.
                    let Some(field) = fields.field(name) else {
                        continue;
                    };
                    recorded.with_value(kept, |v| {
                        let values = [(&field, Some(v))];
                        self.inner.on_record(
                            id,
                            &tracing::span::Record::new(&fields.value_set(&values)),
                            ctx.clone(),
                        );
                    });
                }
                if let Some(span) = ctx.span(id) {
                    span.extensions_mut().replace(Replayed::<L>(
                        recorded.values.len(),
                        std::marker::PhantomData,
                    ));
                }
                true
            })
            .unwrap_or(false);
        if !ours && done.is_none() {
            // Not this task's request (never seen: its values are in its own task): the
            // span without them, rather than a line the formatter cannot write.
            let values: [(&tracing::field::Field, Option<&dyn Value>); 0] = [];
            self.inner.on_new_span(
                &tracing::span::Attributes::new(meta, &fields.value_set(&values)),
                id,
                ctx.clone(),
            );
            if let Some(span) = ctx.span(id) {
                span.extensions_mut()
                    .replace(Replayed::<L>(0, std::marker::PhantomData));
            }
        }
    }
}

impl<S, L> tracing_subscriber::Layer<S> for LazySpanFields<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S> + 'static,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if !is_lazy_request(attrs.metadata()) {
            self.inner.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        // Recorded on the span itself, not through `record_all`: after what waited.
        if ctx.metadata(id).is_some_and(is_lazy_request) {
            self.materialize(id, &ctx);
        }
        self.inner.on_record(id, values, ctx);
    }

    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let waiting: Vec<tracing::span::Id> = ctx
            .event_scope(event)
            .into_iter()
            .flatten()
            .filter(|span| is_lazy_request(span.metadata()))
            .map(|span| span.id())
            .collect();
        for id in &waiting {
            self.materialize(id, &ctx);
        }
        self.inner.on_event(event, ctx);
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(
        &self,
        old: &tracing::span::Id,
        new: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_id_change(old, new, ctx);
    }

    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else if id == std::any::TypeId::of::<LazyFieldsMarker>() {
            Some(&LAZY_FIELDS_MARKER as *const LazyFieldsMarker as *const ())
        } else {
            // SAFETY: the inner layer answers for itself, as `Layered` asks it.
            unsafe { self.inner.downcast_raw(id) }
        }
    }
}

/// Records the tenant a request or job acts for on the current span.
pub fn record_tenant(tenant: &str) {
    record_ids([("tenant_id", tenant)]);
}

/// Records each `(field, id)` the current span has, each as `%` displays it (unquoted):
/// [`record_all`] of `display`ed values, without the formatting machinery where the
/// request span's fields wait for a line (a request records two or three ids).
pub fn record_ids<const N: usize>(ids: [(&'static str, &str); N]) {
    if REQUEST
        .try_with(|scope| scope.capture_texts(&ids))
        .unwrap_or(false)
    {
        return;
    }
    let displayed = ids.map(|(name, id)| (name, tracing::field::display(id)));
    record_all(
        displayed
            .each_ref()
            .map(|(name, d)| (*name, d as &dyn tracing::Value)),
    );
}

/// Records `value` as the current span's `field`, if it has one: what
/// `Span::current().record(..)` does, without taking a handle to the span and dropping it
/// again (two more lookups in the span registry and three reference counts on every call,
/// a few of them on every request).
///
/// (It records from inside `dispatcher::get_default`: under a scoped dispatcher, as in tests,
/// an event logged while the value is formatted is dropped, as any nested dispatch is.)
pub fn record(field: &'static str, value: &dyn tracing::Value) {
    record_all([(field, value)]);
}

/// Records each `(field, value)` the current span has, in one record: one lookup of the
/// span and one update of its formatted fields for them all (each record was about a
/// hundredth of a webhook's instructions; BENCHMARKS.md "Webhook side by side"). Fields
/// the span does not have are left out, as [`record`] leaves them.
pub fn record_all<const N: usize>(values: [(&'static str, &dyn tracing::Value); N]) {
    // A request span whose fields wait for a line keeps them in the request's task.
    if REQUEST
        .try_with(|scope| scope.capture(&values))
        .unwrap_or(false)
    {
        return;
    }
    tracing::dispatcher::get_default(|dispatch| {
        let Some((id, meta)) = dispatch.current_span().into_inner() else {
            return;
        };
        let fields = meta.fields();
        // A field the span lacks still needs a field of this span in the set; without a
        // value it is not recorded.
        let Some(any) = fields.iter().next() else {
            return;
        };
        let found = values.map(|(name, value)| match fields.field(name) {
            Some(field) => (field, Some(value)),
            None => (any.clone(), None),
        });
        if found.iter().all(|(_, value)| value.is_none()) {
            return;
        }
        let set = found.each_ref().map(|(field, value)| (field, *value));
        dispatch.record(&id, &tracing::span::Record::new(&fields.value_set(&set)));
    });
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    /// Which of `targets` log at `level` under the filter built from `spec`.
    fn enabled(spec: &str, targets: &[&'static str], level: Level) -> Vec<&'static str> {
        let subscriber = tracing_subscriber::registry().with(env_filter(Some(spec)));
        tracing::subscriber::with_default(subscriber, || {
            targets
                .iter()
                .copied()
                .filter(|t| match (*t, level) {
                    ("lambda_runtime", Level::DEBUG) => {
                        tracing::enabled!(target: "lambda_runtime", Level::DEBUG)
                    }
                    ("lambda_runtime", _) => {
                        tracing::enabled!(target: "lambda_runtime", Level::TRACE)
                    }
                    ("lambda_http", Level::DEBUG) => {
                        tracing::enabled!(target: "lambda_http", Level::DEBUG)
                    }
                    ("lambda_http", _) => tracing::enabled!(target: "lambda_http", Level::TRACE),
                    ("hyper::proto", Level::DEBUG) => {
                        tracing::enabled!(target: "hyper::proto", Level::DEBUG)
                    }
                    ("hyper::proto", _) => tracing::enabled!(target: "hyper::proto", Level::TRACE),
                    ("reqwest::connect", Level::DEBUG) => {
                        tracing::enabled!(target: "reqwest::connect", Level::DEBUG)
                    }
                    ("reqwest::connect", _) => {
                        tracing::enabled!(target: "reqwest::connect", Level::TRACE)
                    }
                    ("h2::codec", Level::DEBUG) => {
                        tracing::enabled!(target: "h2::codec", Level::DEBUG)
                    }
                    ("h2::codec", _) => tracing::enabled!(target: "h2::codec", Level::TRACE),
                    ("aws_smithy_runtime::client", Level::DEBUG) => {
                        tracing::enabled!(target: "aws_smithy_runtime::client", Level::DEBUG)
                    }
                    ("aws_smithy_runtime::client", _) => {
                        tracing::enabled!(target: "aws_smithy_runtime::client", Level::TRACE)
                    }
                    ("aws_sdk_dynamodb::client", Level::DEBUG) => {
                        tracing::enabled!(target: "aws_sdk_dynamodb::client", Level::DEBUG)
                    }
                    ("aws_sdk_dynamodb::client", _) => {
                        tracing::enabled!(target: "aws_sdk_dynamodb::client", Level::TRACE)
                    }
                    ("tower_http::trace", Level::DEBUG) => {
                        tracing::enabled!(target: "tower_http::trace", Level::DEBUG)
                    }
                    ("tower_http::trace", _) => {
                        tracing::enabled!(target: "tower_http::trace", Level::TRACE)
                    }
                    ("kirim::service", Level::DEBUG) => {
                        tracing::enabled!(target: "kirim::service", Level::DEBUG)
                    }
                    ("kirim::service", _) => {
                        tracing::enabled!(target: "kirim::service", Level::TRACE)
                    }
                    _ => false,
                })
                .collect()
        })
    }

    const NOISY: [&str; 8] = [
        "lambda_runtime",
        "lambda_http",
        "hyper::proto",
        "reqwest::connect",
        "h2::codec",
        "aws_smithy_runtime::client",
        "aws_sdk_dynamodb::client",
        "tower_http::trace",
    ];

    #[test]
    fn at_trace_the_runtime_and_http_crates_stay_capped_while_kirim_logs_everything() {
        for spec in [
            "trace",
            "debug",
            "trace,lambda_runtime=trace,aws_smithy_runtime=trace",
        ] {
            for level in [Level::DEBUG, Level::TRACE] {
                assert_eq!(
                    enabled(spec, &NOISY, level),
                    Vec::<&str>::new(),
                    "{spec} at {level}"
                );
            }
        }
        assert_eq!(
            enabled("trace", &["kirim::service"], Level::TRACE),
            vec!["kirim::service"]
        );
        assert_eq!(
            enabled("debug", &["kirim::service"], Level::DEBUG),
            vec!["kirim::service"]
        );
    }

    #[test]
    fn an_unreadable_spec_falls_back_to_info_with_the_caps() {
        assert!(enabled("=!bad[", &["kirim::service"], Level::DEBUG).is_empty());
        assert!(enabled("=!bad[", &NOISY, Level::DEBUG).is_empty());
    }

    /// The text a request's span and an event in it make, with the formatter's own
    /// `DefaultFields`, or as local mode writes it (`plain`: [`PlainFields`] and
    /// [`RoomForFields`]).
    fn text_logged(plain: bool) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let other = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(plain.then_some(RoomForFields))
            .with((!plain).then(|| {
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(false)
                    .without_time()
                    .with_writer(move || other.clone())
            }))
            .with(plain.then(|| {
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(false)
                    .without_time()
                    .with_writer(move || buf.clone())
                    .fmt_fields(PlainFields)
            }));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "01KB0000000000000000000000",
                method = "POST",
                route = Some("/webhooks/meta"),
                tenant_id = tracing::field::Empty,
                wamid = tracing::field::Empty,
                message_id = tracing::field::Empty,
            );
            let _in = span.enter();
            record("tenant_id", &"01KB1111111111111111111111");
            record("wamid", &tracing::field::display("wamid.HBgL=="));
            // A control code comes out however the formatter writes it, with or without room.
            record("message_id", &tracing::field::display("01KB\u{1b}[31m2222"));
            record("not_a_field", &"ignored");
            tracing::info!(applied = 1, "webhook applied");
            // Escaped by the formatter's own visitor: the message, an error and its sources.
            let err = std::io::Error::other(ChainError);
            tracing::warn!(
                r#type = "template",
                ok = true,
                error = &err as &(dyn std::error::Error + 'static),
                "a \u{1b}[2Jcontrol code in a message"
            );
            tracing::error!(message = "spelled out", code = -3, ratio = 0.5);
            // Text fields: plain, and with what `{:?}` escapes (quotes, a backslash, a
            // combining accent, a tab, a control code, a character outside ASCII).
            tracing::info!(
                plain = "/webhooks/meta ok~",
                quoted = "say \"hi\"",
                backslash = "C:\\x",
                escaped = "say \"hi\" \\ e\u{301}\t\u{7f} é",
                empty = "",
                "text fields"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// Where a test's subscriber writes its lines.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A request served through [`in_request`]: lines before, between and after its ids
    /// are recorded (one twice, one on the span itself, one not the span's), in a nested
    /// span, and at the end after more records.
    async fn a_request_served() {
        in_request(
            "01KB0000000000000000000000".to_owned(),
            axum::http::Method::POST,
            Some("/webhooks/meta"),
            async {
                tracing::info!("before any record");
                record("wamid", &tracing::field::display("wamid.HBgL\"quoted\"=="));
                record("tenant_id", &"01KB1111111111111111111111");
                record("not_a_field", &"ignored");
                record_tenant("01KB3333333333333333333333");
                record_all([
                    ("not_a_field", &"ignored" as &dyn tracing::Value),
                    (
                        "message_id",
                        &tracing::field::display("01KB4444444444444444444444"),
                    ),
                ]);
                tracing::warn!(applied = 1, "after the records");
                {
                    let inner = tracing::info_span!("status", message_id = tracing::field::Empty);
                    let _inner = inner.enter();
                    record(
                        "message_id",
                        &tracing::field::display("01KB2222222222222222222222"),
                    );
                    tracing::error!(error = "boom", "in the nested span");
                }
                tracing::Span::current().record("route", "/v1/messages");
                // A record that carries no value: nothing to add.
                tracing::Span::current().record("route", tracing::field::Empty);
                record("wamid", &tracing::field::display("wamid.second"));
                record_ids([("wamid", "wamid.third"), ("not_a_field", "x")]);
                record("tenant_id", &7_u64);
                tracing::info!(last = true, "at the end");
            },
        )
        .await;
        // Recorded with no line after it: nothing to show.
        in_request(
            "01KB5555555555555555555555".to_owned(),
            axum::http::Method::GET,
            None,
            async {
                record_tenant("01KB6666666666666666666666");
            },
        )
        .await;
    }

    fn logged(subscriber: impl tracing::Subscriber + Send + Sync + 'static, buf: &Buf) -> String {
        tracing::subscriber::with_default(subscriber, || {
            futures::executor::block_on(a_request_served())
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn a_request_span_logs_the_same_lines_whether_its_fields_wait_for_a_line_or_not_as_text_and_json(
    ) {
        let text_layer = |buf: &Buf| {
            let buf = buf.clone();
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .without_time()
                .with_writer(move || buf.clone())
                .fmt_fields(PlainFields)
        };
        let (eager, lazy) = (Buf::default(), Buf::default());
        let text = logged(
            tracing_subscriber::registry()
                .with(RoomForFields)
                .with(text_layer(&eager)),
            &eager,
        );
        assert!(
            text.contains(
                "request{request_id=01KB0000000000000000000000 method=POST route=\"/webhooks/meta\"}: before any record"
            ) && text.contains("message_id=01KB4444444444444444444444}:status{message_id=01KB2222222222222222222222}: in the nested span")
                && text.contains("tenant_id=7}: at the end last=true")
                // A `str` is quoted, an id recorded as one (`%`) is not.
                && text.contains("tenant_id=\"01KB1111111111111111111111\" tenant_id=01KB3333333333333333333333")
                && text.contains("wamid=wamid.second wamid=wamid.third tenant_id=7"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(
            logged(
                tracing_subscriber::registry()
                    .with(RoomForFields)
                    .with(LazySpanFields::new(text_layer(&lazy))),
                &lazy,
            ),
            text
        );

        // Lambda's JSON: the formatter's own span fields (`JsonFields`), ours appended
        // (`AppendJsonFields`), and ours waiting for a line all log the same lines.
        let buf = Buf::default();
        let to = buf.clone();
        let json = logged(
            tracing_subscriber::registry().with(json_layer().with_writer(move || to.clone())),
            &buf,
        );
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{json}");
        let request = &lines[1]["spans"][0];
        assert_eq!(
            request["request_id"], "01KB0000000000000000000000",
            "{json}"
        );
        assert_eq!(request["method"], "POST", "{json}");
        assert_eq!(request["route"], "/webhooks/meta", "{json}");
        assert_eq!(request["tenant_id"], "01KB3333333333333333333333", "{json}");
        assert_eq!(request["wamid"], "wamid.HBgL\"quoted\"==", "{json}");
        assert_eq!(
            request["message_id"], "01KB4444444444444444444444",
            "{json}"
        );
        assert_eq!(
            lines[2]["spans"][1]["message_id"],
            "01KB2222222222222222222222"
        );
        let last = &lines[3]["spans"][0];
        assert_eq!(last["tenant_id"], 7, "{json}");
        assert_eq!(last["wamid"], "wamid.third", "{json}");
        assert_eq!(last["route"], "/v1/messages", "{json}");
        assert!(!json.contains("not_a_field"), "{json}");
        let appended = |buf: &Buf| {
            let buf = buf.clone();
            json_layer()
                .with_writer(move || buf.clone())
                .fmt_fields(AppendJsonFields)
        };
        let (eager, lazy) = (Buf::default(), Buf::default());
        assert_eq!(
            logged(
                tracing_subscriber::registry().with(appended(&eager)),
                &eager
            ),
            json
        );
        assert_eq!(
            logged(
                tracing_subscriber::registry().with(LazySpanFields::new(appended(&lazy))),
                &lazy,
            ),
            json
        );
    }

    #[test]
    fn a_line_in_a_waiting_request_span_from_outside_its_task_is_logged_without_its_fields() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(LazySpanFields::new(
            json_layer()
                .with_writer(move || buf.clone())
                .fmt_fields(AppendJsonFields),
        ));
        tracing::subscriber::with_default(subscriber, || {
            let span = futures::executor::block_on(in_request(
                "01KB0000000000000000000000".to_owned(),
                axum::http::Method::POST,
                None,
                async {
                    record_tenant("01KB1111111111111111111111");
                    tracing::Span::current()
                },
            ));
            // Entered outside the request's task (its values are in that task).
            let _in = span.enter();
            tracing::info!("from elsewhere");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "from elsewhere", "{text}");
        assert_eq!(line["spans"][0]["name"], "request", "{text}");
        assert!(line["spans"][0].get("tenant_id").is_none(), "{text}");
    }

    #[derive(Debug)]
    struct ChainError;
    impl std::fmt::Display for ChainError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("inner \u{1b}[31mcause")
        }
    }
    impl std::error::Error for ChainError {}

    #[test]
    fn local_mode_s_plain_fields_and_their_room_leave_the_logged_text_as_the_formatter_writes_it() {
        let plain = text_logged(false);
        assert!(
            plain.contains("tenant_id=\"01KB1111111111111111111111\"")
                && plain.contains("wamid=wamid.HBgL==")
                && plain.contains("route=\"/webhooks/meta\"")
                && !plain.contains("not_a_field")
                && plain.contains("plain=\"/webhooks/meta ok~\" quoted=\"say \\\"hi\\\"\"")
                && plain.contains("empty=\"\""),
            "{plain}"
        );
        assert_eq!(text_logged(true), plain);
    }
}
