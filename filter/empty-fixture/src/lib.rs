//! Bench fixture: the emptiest proxy-wasm HTTP filter (a root context that creates an HTTP
//! context per stream, which does nothing). `cargo xtask bench filter` measures Plover's
//! filter against it to separate Plover's own cost from the Wasm runtime's.
//!
//! With the plugin configuration `read-cluster-name` each stream instead makes exactly one host
//! call, reading `xds.cluster_name` in its request headers: the least any filter that tells
//! revisions apart by cluster must do, so the bench can show what one host call costs.
//!
//! With `evaluate:<CEL expression>` the expression is compiled once (Envoy's `expr_create`)
//! and evaluated in each stream's `on_log`, the way Plover's filter reads a finished request:
//! the bench prices an evaluation and each value in it (`--fixture NAME=evaluate:[…]`).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot { read_cluster_name: false, expression: None }) });
}}

struct EmptyRoot {
    read_cluster_name: bool,
    /// Token of the compiled `evaluate:` expression.
    expression: Option<u32>,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let configuration = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.read_cluster_name = configuration == b"read-cluster-name";
        self.expression = None;
        if let Some(expression) = configuration.strip_prefix(b"evaluate:") {
            self.expression = hostcalls::call_foreign_function("expr_create", Some(expression))
                .ok()
                .flatten()
                .and_then(|token| <[u8; 4]>::try_from(token.as_slice()).ok())
                .map(u32::from_le_bytes);
            // An expression Envoy cannot compile fails the configuration: a bench variant
            // must not silently measure nothing.
            return self.expression.is_some();
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if let Some(token) = self.expression {
            return Some(Box::new(EvaluatingStream { token }));
        }
        if self.read_cluster_name {
            Some(Box::new(OneReadStream))
        } else {
            Some(Box::new(EmptyStream))
        }
    }
}

struct EmptyStream;

impl Context for EmptyStream {}

impl HttpContext for EmptyStream {}

struct OneReadStream;

impl Context for OneReadStream {}

impl HttpContext for OneReadStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let cluster = hostcalls::get_property(vec!["xds", "cluster_name"]);
        std::hint::black_box(cluster.ok());
        Action::Continue
    }
}

struct EvaluatingStream {
    token: u32,
}

impl Context for EvaluatingStream {}

impl HttpContext for EvaluatingStream {
    fn on_log(&mut self) {
        let value =
            hostcalls::call_foreign_function("expr_evaluate", Some(&self.token.to_le_bytes()));
        std::hint::black_box(value.ok());
    }
}
