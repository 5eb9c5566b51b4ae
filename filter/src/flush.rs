//! The root context's side: every tick, turn the VM's aggregate into a batch, queue it, and
//! keep exactly one exporter call going while anything is queued.
//!
//! Sending never touches user traffic: it runs on the tick and on callout responses only, and
//! every failure is kept in the outbox (retried) or counted as dropped (reported).

use std::fmt;

use plover_wire::batch::CONTENT_TYPE;
use plover_wire::FilterConfig;

use crate::aggregate::Aggregate;
use crate::identity::{allocate_instance_number, instance_id, SharedData};
use crate::log_limit::LogLimiter;
use crate::outbox::{Answer, Outbox};

/// How long past the callout timeout a call may stay unanswered before it is presumed lost.
/// Envoy always answers within the timeout; this only guards against a wedged host.
const LOST_CALL_GRACE_MS: u64 = 5_000;

/// How often the same complaint about the exporter path may be logged, per VM.
const COMPLAINT_INTERVAL_MS: u64 = 60_000;

/// What flushing needs from the proxy besides shared data.
pub trait ExporterHost: SharedData {
    /// Starts an HTTP callout; its answer arrives later with the returned token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String>;
}

/// Where batches go and how they are authenticated.
#[derive(Debug)]
struct Target {
    cluster: String,
    path: String,
    authority: String,
    authorization: String,
    timeout_ms: u64,
}

impl Target {
    fn new(config: &FilterConfig) -> Target {
        let exporter = &config.exporter;
        let authority = if exporter.authority.is_empty() {
            &exporter.cluster
        } else {
            &exporter.authority
        };
        Target {
            cluster: exporter.cluster.clone(),
            path: exporter.path.clone(),
            authority: authority.clone(),
            authorization: format!("Bearer {}", exporter.token),
            timeout_ms: exporter.timeout_ms,
        }
    }
}

/// One VM's sender: identity, outbox and exporter target.
#[derive(Debug)]
pub struct Flusher {
    gateway: String,
    start_ns: u64,
    /// Allocated with the first batch, so a VM that never sees traffic (Envoy's main thread)
    /// takes no instance number.
    instance: Option<String>,
    target: Target,
    outbox: Outbox,
    complaints: LogLimiter,
    /// Set once Envoy shuts the VM down: no tick will come, so answers drive the last sends.
    shutting_down: bool,
}

/// Whether the VM may be deleted now (Envoy waits for `proxy_done` otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Not shutting down, or a last call is still out.
    Pending,
    /// Shutting down and nothing more will be sent.
    Finished,
}

impl Flusher {
    /// `start_ns` is the VM's start time: half of its instance id.
    pub fn new(config: &FilterConfig, gateway: String, start_ns: u64) -> Flusher {
        Flusher {
            gateway,
            start_ns,
            instance: None,
            target: Target::new(config),
            outbox: Outbox::new(&config.buffer),
            complaints: LogLimiter::new(COMPLAINT_INTERVAL_MS),
            shutting_down: false,
        }
    }

    /// Envoy is shutting the VM down (its plugin was removed or replaced): the open interval is
    /// queued and sent now rather than lost with the VM, and each answer sends the next queued
    /// batch until none is left or the exporter stops accepting.
    pub fn on_done(
        &mut self,
        now_ms: u64,
        aggregate: &mut Aggregate,
        host: &impl ExporterHost,
    ) -> Shutdown {
        self.shutting_down = true;
        self.on_tick(now_ms, aggregate, host);
        self.shutdown_state()
    }

    fn shutdown_state(&self) -> Shutdown {
        if self.shutting_down && !self.outbox.in_flight() {
            Shutdown::Finished
        } else {
            Shutdown::Pending
        }
    }

    /// A new configuration for the same VM: same identity, queue and sequence, so nothing
    /// already counted is lost or sent twice; new target and bounds.
    pub fn reconfigure(&mut self, config: &FilterConfig, gateway: String) {
        self.gateway = gateway;
        self.target = Target::new(config);
        self.outbox.set_limits(&config.buffer);
    }

    /// The tick: close the interval, queue its batch unless there is nothing to say, and send
    /// if idle (this is also when failed sends are retried).
    pub fn on_tick(&mut self, now_ms: u64, aggregate: &mut Aggregate, host: &impl ExporterHost) {
        if self.outbox.expire(
            now_ms,
            self.target.timeout_ms.saturating_add(LOST_CALL_GRACE_MS),
        ) {
            self.complain(
                "lost call",
                now_ms,
                format_args!("Exporter call got no answer; sending the batch again."),
            );
        }
        let mut batch = aggregate.take_batch(now_ms);
        batch.dropped_requests = batch
            .dropped_requests
            .saturating_add(self.outbox.take_dropped());
        if let Some(since) = self.outbox.take_dropped_since() {
            // The report covers the interval the lost requests belonged to.
            batch.start_unix_ms = batch.start_unix_ms.min(since);
        }
        if !batch.series.is_empty() || batch.dropped_requests > 0 {
            batch.gateway = self.gateway.clone();
            let start_ns = self.start_ns;
            batch.instance = self
                .instance
                .get_or_insert_with(|| instance_id(start_ns, allocate_instance_number(host)))
                .clone();
            for dropped in self.outbox.push(&mut batch) {
                self.complain(
                    "buffer full",
                    now_ms,
                    format_args!(
                        "Batch buffer full; dropped batch {} ({} requests).",
                        dropped.sequence, dropped.requests
                    ),
                );
            }
        }
        self.pump(now_ms, host);
    }

    /// The exporter answered call `token` with `status` (`None`: no response at all);
    /// `refused_requests` is what a 2xx answer said it could not keep
    /// ([`plover_wire::batch::REFUSED_REQUESTS_HEADER`]).
    pub fn on_response(
        &mut self,
        now_ms: u64,
        token: u32,
        status: Option<u16>,
        refused_requests: u64,
        host: &impl ExporterHost,
    ) -> Shutdown {
        if refused_requests > 0 && matches!(status, Some(200..=299)) {
            // Counted whatever call it answers: a late answer to an expired call is the only
            // one that says it (the batch's resend is a duplicate).
            self.outbox.add_dropped(refused_requests);
            self.complain(
                "refused requests",
                now_ms,
                format_args!("Exporter could not keep {refused_requests} requests (its --max-revisions was reached); counted as dropped."),
            );
        }
        match self.outbox.answer(token, status) {
            Answer::Delivered { sequence } => {
                log::debug!("Exporter stored batch {sequence}.");
                // Drain a backlog at the exporter's pace rather than one batch per tick.
                self.pump(now_ms, host);
            }
            Answer::Retry { sequence } => {
                let status = Status(status);
                self.complain(
                    &format!("retry {status}"),
                    now_ms,
                    format_args!("Exporter answered batch {sequence} with {status}; retrying at the next flush."),
                );
            }
            Answer::Refused(dropped) => {
                let status = Status(status);
                self.complain(
                    &format!("refused {status}"),
                    now_ms,
                    format_args!(
                        "Exporter refused batch {} with {status}; dropped it ({} requests).",
                        dropped.sequence, dropped.requests
                    ),
                );
                self.pump(now_ms, host);
            }
            Answer::Stale => {}
        }
        // A failed last send is not retried while shutting down: there is no next tick.
        self.shutdown_state()
    }

    /// Sends the front batch unless a call is already in flight.
    fn pump(&mut self, now_ms: u64, host: &impl ExporterHost) {
        let Some(pending) = self.outbox.ready() else {
            return;
        };
        let target = &self.target;
        let headers = [
            (":method", "POST"),
            (":path", target.path.as_str()),
            (":authority", target.authority.as_str()),
            ("content-type", CONTENT_TYPE),
            ("authorization", target.authorization.as_str()),
        ];
        match host.dispatch(&target.cluster, &headers, &pending.body, target.timeout_ms) {
            Ok(token) => self.outbox.sent(token, now_ms),
            Err(error) => {
                let cluster = target.cluster.clone();
                self.complain(
                    &format!("dispatch {error}"),
                    now_ms,
                    format_args!("Could not call exporter cluster {cluster:?} ({error}); retrying at the next flush."),
                );
            }
        }
    }

    fn complain(&mut self, cause: &str, now_ms: u64, message: fmt::Arguments<'_>) {
        match self.complaints.check(cause, now_ms) {
            Some(0) => log::warn!("{message}"),
            Some(suppressed) => {
                log::warn!("{message} ({suppressed} more like this since the last report.)")
            }
            None => {}
        }
    }

    pub fn queued(&self) -> usize {
        self.outbox.len()
    }
}

/// An exporter status for log lines and complaint causes.
struct Status(Option<u16>);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, "status {code}"),
            None => f.write_str("no response"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SetError;
    use plover_wire::{Batch, Role, SeriesKey};
    use std::cell::{Cell, RefCell};

    /// One callout: token, decoded body, headers.
    type Call = (u32, Batch, Vec<(String, String)>);

    /// Records callouts; shared data is a single counter slot.
    #[derive(Default)]
    struct MockExporter {
        sent: RefCell<Vec<Call>>,
        next_token: Cell<u32>,
        refuse_dispatch: Cell<bool>,
        counter: RefCell<Option<(Vec<u8>, u32)>>,
    }

    impl SharedData for MockExporter {
        fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
            self.counter.borrow().clone()
        }
        fn set(&self, _: &str, value: &[u8], _: u32) -> Result<(), SetError> {
            let cas = self.counter.borrow().as_ref().map_or(1, |(_, c)| c + 1);
            *self.counter.borrow_mut() = Some((value.to_vec(), cas));
            Ok(())
        }
    }

    impl ExporterHost for MockExporter {
        fn dispatch(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            timeout_ms: u64,
        ) -> Result<u32, String> {
            assert_eq!((cluster, timeout_ms), ("exporter", 2_000));
            if self.refuse_dispatch.get() {
                return Err("BadArgument".into());
            }
            let token = self.next_token.get() + 1;
            self.next_token.set(token);
            let headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.sent
                .borrow_mut()
                .push((token, Batch::decode(body).unwrap(), headers));
            Ok(token)
        }
    }

    impl MockExporter {
        fn last(&self) -> (u32, Batch) {
            let sent = self.sent.borrow();
            let (token, batch, _) = sent.last().unwrap();
            (*token, batch.clone())
        }
        fn calls(&self) -> usize {
            self.sent.borrow().len()
        }
    }

    fn key() -> SeriesKey {
        SeriesKey::answered("demo", "app", "r", "v2", Role::Canary, 200)
    }

    fn setup(buffer: &str) -> (Flusher, Aggregate, MockExporter) {
        let json =
            crate::stream::tests::CONFIG.replacen('{', &format!(r#"{{"buffer": {buffer},"#), 1);
        let config = FilterConfig::from_json(json.as_bytes()).unwrap();
        (
            Flusher::new(&config, "gw-1".into(), 0xabc),
            Aggregate::new(0),
            MockExporter::default(),
        )
    }

    fn traffic(aggregate: &mut Aggregate, requests: usize) {
        for _ in 0..requests {
            aggregate.record(key().as_ref(), 1_000, Some((10, 20)));
        }
    }

    #[test]
    fn an_idle_vm_sends_nothing_and_takes_no_instance_number() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        for now in [1_000, 2_000, 3_000] {
            flusher.on_tick(now, &mut aggregate, &host);
        }
        assert_eq!(host.calls(), 0);
        assert!(host.counter.borrow().is_none());
    }

    #[test]
    fn a_tick_sends_one_batch_with_identity_interval_and_headers() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 3);
        flusher.on_tick(1_000, &mut aggregate, &host);
        let sent = host.sent.borrow();
        let (_, batch, headers) = &sent[0];
        assert_eq!(
            (
                batch.gateway.as_str(),
                batch.instance.as_str(),
                batch.sequence
            ),
            ("gw-1", "abc-1", 1)
        );
        assert_eq!(
            (batch.start_unix_ms, batch.end_unix_ms, batch.requests()),
            (0, 1_000, 3)
        );
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header(":method"), Some("POST"));
        assert_eq!(header(":path"), Some("/v1/batches"));
        assert_eq!(header(":authority"), Some("exporter"));
        assert_eq!(
            header("content-type"),
            Some("application/vnd.plover.batch.v1")
        );
        assert_eq!(header("authorization"), Some("Bearer secret"));
    }

    #[test]
    fn the_instance_id_is_allocated_once() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 1);
        flusher.on_tick(1_000, &mut aggregate, &host);
        flusher.on_response(1_001, host.last().0, Some(200), 0, &host);
        traffic(&mut aggregate, 1);
        flusher.on_tick(2_000, &mut aggregate, &host);
        let (_, second) = host.last();
        assert_eq!((second.instance.as_str(), second.sequence), ("abc-1", 2));
    }

    #[test]
    fn a_backlog_drains_one_call_at_a_time_without_waiting_for_ticks() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        // The exporter is down for three ticks: one call per tick, always the oldest batch.
        for (i, now) in [1_000, 2_000, 3_000].into_iter().enumerate() {
            traffic(&mut aggregate, i + 1);
            flusher.on_tick(now, &mut aggregate, &host);
            let (token, batch) = host.last();
            assert_eq!(batch.sequence, 1);
            flusher.on_response(now + 10, token, Some(503), 0, &host);
        }
        assert_eq!((host.calls(), flusher.queued()), (3, 3));
        // It comes back: each 2xx sends the next batch immediately.
        traffic(&mut aggregate, 4);
        flusher.on_tick(4_000, &mut aggregate, &host);
        let mut delivered = Vec::new();
        while let Some((token, batch)) = (flusher.queued() > 0).then(|| host.last()) {
            delivered.push((batch.sequence, batch.requests()));
            flusher.on_response(4_001, token, Some(200), 0, &host);
        }
        assert_eq!(delivered, [(1, 1), (2, 2), (3, 3), (4, 4)]);
        assert_eq!(host.calls(), 3 + 4);
    }

    #[test]
    fn a_call_in_flight_blocks_further_sends() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 1);
        flusher.on_tick(1_000, &mut aggregate, &host);
        traffic(&mut aggregate, 1);
        flusher.on_tick(2_000, &mut aggregate, &host);
        assert_eq!((host.calls(), flusher.queued()), (1, 2));
    }

    #[test]
    fn refused_batches_are_reported_as_dropped_next_time() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 5);
        flusher.on_tick(1_000, &mut aggregate, &host);
        flusher.on_response(1_001, host.last().0, Some(413), 0, &host);
        assert_eq!(flusher.queued(), 0);
        // Even without new traffic the loss is reported.
        flusher.on_tick(2_000, &mut aggregate, &host);
        let (_, report) = host.last();
        assert_eq!(
            (
                report.sequence,
                report.dropped_requests,
                report.series.len()
            ),
            (2, 5, 0)
        );
        // The report spans the interval the lost batch covered, not only its own second.
        assert!(report.start_unix_ms < 1_000, "{}", report.start_unix_ms);
    }

    #[test]
    fn requests_the_exporter_could_not_keep_are_reported_as_dropped() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 5);
        flusher.on_tick(1_000, &mut aggregate, &host);
        flusher.on_response(1_001, host.last().0, Some(200), 3, &host);
        flusher.on_tick(2_000, &mut aggregate, &host);
        assert_eq!(host.last().1.dropped_requests, 3);
        // Only a 2xx answer's count means anything.
        traffic(&mut aggregate, 1);
        let token = host.last().0;
        flusher.on_response(2_001, token, Some(200), 0, &host);
        flusher.on_tick(3_000, &mut aggregate, &host);
        flusher.on_response(3_001, host.last().0, Some(503), 7, &host);
        flusher.on_tick(4_000, &mut aggregate, &host);
        assert_eq!(host.last().1.dropped_requests, 0);
    }

    #[test]
    fn dispatch_errors_keep_the_batch_for_the_next_tick() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        host.refuse_dispatch.set(true);
        traffic(&mut aggregate, 2);
        flusher.on_tick(1_000, &mut aggregate, &host);
        assert_eq!((host.calls(), flusher.queued()), (0, 1));
        host.refuse_dispatch.set(false);
        flusher.on_tick(2_000, &mut aggregate, &host);
        assert_eq!(host.last().1.sequence, 1);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_reports_it() {
        let (mut flusher, mut aggregate, host) = setup(r#"{"max_batches": 2}"#);
        host.refuse_dispatch.set(true);
        for (i, now) in [1_000, 2_000, 3_000].into_iter().enumerate() {
            traffic(&mut aggregate, i + 1);
            flusher.on_tick(now, &mut aggregate, &host);
        }
        host.refuse_dispatch.set(false);
        let mut seen = Vec::new();
        for now in [4_000, 5_000] {
            flusher.on_tick(now, &mut aggregate, &host);
            while flusher.queued() > 0 {
                let (token, batch) = host.last();
                seen.push((batch.sequence, batch.requests(), batch.dropped_requests));
                flusher.on_response(now + 1, token, Some(200), 0, &host);
            }
        }
        // Batch 3 evicted batch 1; batch 4 (no traffic, only batch 1's loss) evicted batch 2,
        // whose loss batch 5 reports. Every request is either delivered or reported dropped.
        assert_eq!(seen, [(3, 3, 0), (4, 0, 1), (5, 0, 2)]);
    }

    #[test]
    fn shutting_down_sends_the_open_interval_and_the_backlog_then_finishes() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        // One batch waits from an outage; the open interval has three more requests.
        traffic(&mut aggregate, 2);
        flusher.on_tick(1_000, &mut aggregate, &host);
        flusher.on_response(1_001, host.last().0, Some(503), 0, &host);
        traffic(&mut aggregate, 3);
        assert_eq!(
            flusher.on_done(1_500, &mut aggregate, &host),
            Shutdown::Pending
        );
        let mut delivered = Vec::new();
        loop {
            let (token, batch) = host.last();
            delivered.push((batch.sequence, batch.requests()));
            if flusher.on_response(1_501, token, Some(200), 0, &host) == Shutdown::Finished {
                break;
            }
        }
        assert_eq!(delivered, [(1, 2), (2, 3)]);
        assert_eq!(flusher.queued(), 0);
    }

    #[test]
    fn shutting_down_gives_up_when_the_exporter_fails_or_there_is_nothing_to_send() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        assert_eq!(
            flusher.on_done(1_000, &mut aggregate, &host),
            Shutdown::Finished
        );
        assert_eq!(host.calls(), 0);

        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 1);
        assert_eq!(
            flusher.on_done(1_000, &mut aggregate, &host),
            Shutdown::Pending
        );
        assert_eq!(
            flusher.on_response(1_001, host.last().0, None, 0, &host),
            Shutdown::Finished
        );
        // Outside a shutdown an answer never finishes anything.
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 1);
        flusher.on_tick(1_000, &mut aggregate, &host);
        assert_eq!(
            flusher.on_response(1_001, host.last().0, Some(200), 0, &host),
            Shutdown::Pending
        );
    }

    #[test]
    fn a_lost_call_is_sent_again_with_the_same_sequence() {
        let (mut flusher, mut aggregate, host) = setup("{}");
        traffic(&mut aggregate, 1);
        flusher.on_tick(1_000, &mut aggregate, &host);
        flusher.on_tick(2_000, &mut aggregate, &host);
        assert_eq!(host.calls(), 1);
        flusher.on_tick(
            1_000 + 2_000 + LOST_CALL_GRACE_MS + 1,
            &mut aggregate,
            &host,
        );
        assert_eq!(host.calls(), 2);
        assert_eq!(host.last().1.sequence, 1);
    }
}
