//! The proxy-wasm ABI adapter: the only code that makes host calls. It implements the
//! [`StreamHost`], [`SharedData`] and [`ExporterHost`] traits with `proxy_wasm::hostcalls`
//! (never the SDK's trait helpers, which unwrap host errors and would panic the VM), and wires
//! Envoy's callbacks to [`Stream`] and [`Flusher`].
//!
//! Host calls per request (see `stream.rs`, whose tests count them): one, in `on_log`, the
//! evaluation of the configuration's [`Reading`] (a second, guarded one for a request without a
//! response). Where Envoy lacks CEL (`expr_create` fails) `on_log` reads each value instead.
//!
//! The default build implements no header hook, and `cargo xtask wasm` removes their exports
//! (with the body, trailer and network ones) from `plover_filter.wasm`, so Envoy never enters
//! the VM for them. The `tagging` feature builds `plover_filter_tagging.wasm`, whose header hooks
//! write `tagging`'s headers, for routes Plover does not manage.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
#[cfg(feature = "tagging")]
use proxy_wasm::types::Action;
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType, Status};

use plover_wire::ConfigError;

use crate::aggregate::Aggregate;
use crate::flush::{ExporterHost, Flusher, Shutdown};
use crate::identity::{gateway_id, SetError, SharedData};
use crate::record::{property, Reading};
use crate::stream::{string_property, ExpressionToken, Expressions, Plugin, Stream, StreamHost};

/// Whether this build has the header hooks `tagging` needs.
const TAGGING_BUILD: bool = cfg!(feature = "tagging");

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs a panic at critical before the VM dies.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new()) });
}}

/// The proxy, reached through host calls; failures become `None` or are ignored.
struct Envoy;

impl StreamHost for Envoy {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn evaluate(&self, expression: ExpressionToken) -> Option<Vec<u8>> {
        hostcalls::call_foreign_function("expr_evaluate", Some(&expression.to_le_bytes()))
            .ok()
            .flatten()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_request_header(&self, name: &str, value: &str) {
        // Replaces any value the client sent, so upstreams can trust the tag.
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn set_response_header(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
    }
}

impl SharedData for Envoy {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), (cas != 0).then_some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Failed),
        }
    }
}

impl ExporterHost for Envoy {
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            Some(body),
            Vec::new(),
            Duration::from_millis(timeout_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }
}

/// Compiles both forms of `reading` in Envoy (per root context, so once per VM and
/// configuration).
fn compile_expressions(reading: &Reading) -> Expressions {
    Expressions {
        fast: compile(&reading.expression(false)),
        guarded: compile(&reading.expression(true)),
    }
}

/// One CEL expression compiled by Envoy; `None` where Envoy was built without the CEL parser.
fn compile(expression: &str) -> Option<ExpressionToken> {
    let token = hostcalls::call_foreign_function("expr_create", Some(expression.as_bytes()))
        .ok()
        .flatten()?;
    <[u8; 4]>::try_from(token.as_slice())
        .ok()
        .map(u32::from_le_bytes)
}

fn delete_expression(token: ExpressionToken) {
    let _ = hostcalls::call_foreign_function("expr_delete", Some(&token.to_le_bytes()));
}

/// Wall-clock time from the host: wasm32-unknown-unknown has no clock of its own.
fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// One per VM (each worker thread, plus Envoy's main thread, whose root context never sees a
/// request and therefore never sends).
struct Root {
    start_ns: u64,
    /// `None` while the configuration is invalid: streams pass through.
    plugin: Option<Rc<Plugin>>,
    /// Owned here, not by the plugin, so counts survive a reconfiguration.
    aggregate: Rc<RefCell<Aggregate>>,
    flusher: Option<Flusher>,
    /// The compiled reading of the current configuration.
    expressions: Expressions,
}

impl Root {
    fn new() -> Root {
        let start_ns = now_ns();
        Root {
            start_ns,
            plugin: None,
            aggregate: Rc::new(RefCell::new(Aggregate::new(start_ns / 1_000_000))),
            flusher: None,
            expressions: Expressions::default(),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let header = |name: &str| {
            hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
        };
        let status = header(":status").and_then(|s| s.parse().ok());
        let refused = header(plover_wire::batch::REFUSED_REQUESTS_HEADER)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let Some(flusher) = self.flusher.as_mut() else {
            return;
        };
        if flusher.on_response(now_ms(), token, status, refused, &Envoy) == Shutdown::Finished {
            // The last batch of a VM being shut down is answered: Envoy may delete it.
            let _ = hostcalls::done();
        }
    }

    /// Envoy is shutting the VM down: send what was counted since the last tick before going.
    fn on_done(&mut self) -> bool {
        let (Some(flusher), Ok(mut aggregate)) =
            (self.flusher.as_mut(), self.aggregate.try_borrow_mut())
        else {
            return true;
        };
        flusher.on_done(now_ms(), &mut aggregate, &Envoy) == Shutdown::Finished
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let json = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let configured = Plugin::configure(&json, Rc::clone(&self.aggregate)).and_then(|plugin| {
            if plugin.config.tagging.is_on() && !TAGGING_BUILD {
                return Err(ConfigError::Invalid {
                    field: "tagging".into(),
                    expected: "no tagging in plover_filter.wasm, which has no header hooks (routes Plover manages are tagged by their router); load plover_filter_tagging.wasm to tag routes Plover does not manage".into(),
                });
            }
            Ok(plugin)
        });
        let plugin = match configured {
            Ok(plugin) => plugin,
            Err(error) => {
                // Returning true keeps the VM (and user traffic) alive; streams pass through.
                log::error!("Plover filter disabled, traffic passes through untouched: {error}");
                self.plugin = None;
                return true;
            }
        };
        let old = std::mem::take(&mut self.expressions);
        for token in [old.fast, old.guarded].into_iter().flatten() {
            delete_expression(token);
        }
        self.expressions = compile_expressions(&plugin.reading);
        if self.expressions.fast.is_none() || self.expressions.guarded.is_none() {
            log::warn!("Envoy could not compile Plover's CEL expressions (no CEL support?); requests the compiled form cannot read are read one property at a time, which costs more CPU.");
        }
        let plugin = plugin.with_expressions(self.expressions);
        let config = &plugin.config;
        let node_id = if config.gateway_id.is_empty() {
            string_property(&Envoy, property::NODE_ID)
        } else {
            None
        };
        let gateway = gateway_id(&config.gateway_id, node_id.as_deref());
        log::info!(
            "Plover filter configured: gateway {gateway:?}, {} rules, exporter cluster {:?}, flush every {} ms.",
            config.rules.len(),
            config.exporter.cluster,
            config.flush_interval_ms
        );
        match self.flusher.as_mut() {
            Some(flusher) => flusher.reconfigure(config, gateway),
            None => self.flusher = Some(Flusher::new(config, gateway, self.start_ns)),
        }
        if let Err(status) =
            hostcalls::set_tick_period(Duration::from_millis(config.flush_interval_ms))
        {
            log::error!("Could not set the flush timer ({status:?}); no batches will be sent.");
        }
        self.plugin = Some(Rc::new(plugin));
        true
    }

    fn on_tick(&mut self) {
        let Some(flusher) = self.flusher.as_mut() else {
            return;
        };
        let Ok(mut aggregate) = self.aggregate.try_borrow_mut() else {
            return;
        };
        flusher.on_tick(now_ms(), &mut aggregate, &Envoy);
    }

    /// Loaded as an access logger (`envoy.access_loggers.wasm`) rather than an HTTP filter,
    /// the module gets each finished request here, on its root context: Envoy creates no
    /// per-stream context, so a request costs one entry into the VM instead of four.
    fn on_log(&mut self) {
        if let Some(plugin) = &self.plugin {
            Stream::new(Some(Rc::clone(plugin))).on_log(&Envoy);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always Some: the SDK panics on None. Without a plugin the stream is a passthrough.
        Some(Box::new(Http(Stream::new(self.plugin.clone()))))
    }
}

/// One HTTP stream. Every hook returns `Continue`: the filter never holds up traffic.
struct Http(Stream);

impl Context for Http {}

impl HttpContext for Http {
    #[cfg(feature = "tagging")]
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.0.on_request_headers(&Envoy);
        Action::Continue
    }

    #[cfg(feature = "tagging")]
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.0.on_response_headers(&Envoy);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.0.on_log(&Envoy);
    }
}
