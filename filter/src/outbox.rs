//! The bounded queue of encoded batches waiting for the exporter, and what each exporter answer
//! does to it.
//!
//! Batches leave strictly in sequence order, one call at a time: the front batch is the only
//! one ever in flight. A batch that is retried keeps its sequence number, so the exporter,
//! which dedupes on (gateway, instance, sequence), applies it once however often it arrives.
//! Nothing is lost silently: every batch dropped here (queue full, refused, too large) adds its
//! requests to `dropped_requests`, which the next batch reports.

use std::collections::VecDeque;

use plover_wire::config::BufferLimits;
use plover_wire::Batch;

/// What an exporter answer means for the batch in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: stored (or already stored); send the next one right away.
    Delivered,
    /// 5xx, timeout, no answer, 408/429: keep it and try again on the next tick.
    Retry,
    /// Any other 4xx: the exporter will never take this batch (malformed, unauthorized, too
    /// large), so resending it would only block the queue.
    Refused,
}

impl Verdict {
    /// `status` is the callout's `:status`; `None` when the call produced no response.
    pub fn of(status: Option<u16>) -> Verdict {
        match status {
            Some(200..=299) => Verdict::Delivered,
            // Timeouts and back-pressure are transient even though they are 4xx.
            Some(408 | 429) => Verdict::Retry,
            Some(400..=499) => Verdict::Refused,
            _ => Verdict::Retry,
        }
    }
}

/// An encoded batch waiting to be delivered.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub sequence: u64,
    pub body: Vec<u8>,
    /// Requests whose data is lost if this batch is dropped: its own requests plus the dropped
    /// count it carries (that report would be lost too).
    pub requests: u64,
    /// Start of the interval those requests belong to (Unix ms).
    pub start_unix_ms: u64,
}

/// What happened to a batch that was dropped without being delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub sequence: u64,
    pub requests: u64,
}

/// How the in-flight call ended, for the caller to log and to decide whether to send more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Delivered {
        sequence: u64,
    },
    Retry {
        sequence: u64,
    },
    Refused(Dropped),
    /// Not the call in flight (it expired and was sent again): ignored.
    Stale,
}

#[derive(Debug)]
struct InFlight {
    token: u32,
    sent_ms: u64,
}

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    max_batches: usize,
    max_bytes: usize,
    /// Sequence of the next new batch; the first is 1.
    next_sequence: u64,
    /// Requests dropped since the last batch was sealed.
    dropped_requests: u64,
    /// Start of the earliest interval those dropped requests belong to, when known.
    dropped_since_ms: Option<u64>,
    /// The front batch's call, if one is outstanding.
    in_flight: Option<InFlight>,
    /// The front batch was dispatched at least once (only the front is ever sent).
    front_sent: bool,
}

impl Outbox {
    pub fn new(limits: &BufferLimits) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_batches: limits.max_batches.max(1),
            max_bytes: limits.max_bytes,
            next_sequence: 1,
            dropped_requests: 0,
            dropped_since_ms: None,
            in_flight: None,
            front_sent: false,
        }
    }

    /// New bounds (a reconfiguration); they are enforced at the next push.
    pub fn set_limits(&mut self, limits: &BufferLimits) {
        self.max_batches = limits.max_batches.max(1);
        self.max_bytes = limits.max_bytes;
    }

    /// Takes the count the next batch must report as `dropped_requests`.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_requests)
    }

    /// Takes the start of the earliest interval whose requests were dropped since the last
    /// batch was sealed: the next batch's interval is widened back to it, so the exporter
    /// marks the seconds the loss belongs to, not only the report's.
    pub fn take_dropped_since(&mut self) -> Option<u64> {
        self.dropped_since_ms.take()
    }

    /// Counts a dropped batch: its requests, and the interval they belong to.
    fn drop_batch(&mut self, sequence: u64, requests: u64, start_unix_ms: u64) -> Dropped {
        self.add_dropped(requests);
        self.dropped_since_ms = Some(
            self.dropped_since_ms
                .map_or(start_unix_ms, |since| since.min(start_unix_ms)),
        );
        Dropped { sequence, requests }
    }

    /// Counts requests lost elsewhere (e.g. the aggregate's series cap) for the next batch.
    pub fn add_dropped(&mut self, requests: u64) {
        self.dropped_requests = self.dropped_requests.saturating_add(requests);
    }

    /// Gives `batch` the next sequence number, encodes it and queues it. Returns the batches
    /// dropped to stay within bounds (possibly this one, when it cannot fit at all).
    pub fn push(&mut self, batch: &mut Batch) -> Vec<Dropped> {
        batch.sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.saturating_add(1);
        let pending = Pending {
            sequence: batch.sequence,
            body: batch.encode(),
            requests: batch.requests().saturating_add(batch.dropped_requests),
            start_unix_ms: batch.start_unix_ms,
        };
        if pending.body.len() > self.max_bytes {
            return vec![self.drop_batch(
                pending.sequence,
                pending.requests,
                pending.start_unix_ms,
            )];
        }
        self.queued_bytes += pending.body.len();
        self.queue.push_back(pending);

        let mut dropped = Vec::new();
        while self.queue.len() > self.max_batches || self.queued_bytes > self.max_bytes {
            // The oldest batch never sent. A batch sent once may be stored by the exporter
            // however its call ended (a call Envoy timed out can still be applied when the
            // exporter resumes), so counting it as dropped could count its requests twice; it
            // stays at the front until an answer settles it (stored, duplicate or refused).
            let oldest = usize::from(self.front_sent);
            let Some(evicted) = self.queue.remove(oldest) else {
                break;
            };
            self.queued_bytes -= evicted.body.len();
            dropped.push(self.drop_batch(
                evicted.sequence,
                evicted.requests,
                evicted.start_unix_ms,
            ));
        }
        dropped
    }

    /// The batch to send now: the front one, unless a call is already in flight.
    pub fn ready(&self) -> Option<&Pending> {
        if self.in_flight.is_some() {
            return None;
        }
        self.queue.front()
    }

    /// Records that the front batch was dispatched as call `token`.
    pub fn sent(&mut self, token: u32, now_ms: u64) {
        if !self.queue.is_empty() {
            self.in_flight = Some(InFlight {
                token,
                sent_ms: now_ms,
            });
            self.front_sent = true;
        }
    }

    /// Applies the exporter's answer to call `token`.
    pub fn answer(&mut self, token: u32, status: Option<u16>) -> Answer {
        if self.in_flight.as_ref().is_none_or(|f| f.token != token) {
            return Answer::Stale;
        }
        self.in_flight = None;
        let Some(front) = self.queue.front() else {
            return Answer::Stale;
        };
        let sequence = front.sequence;
        match Verdict::of(status) {
            Verdict::Retry => Answer::Retry { sequence },
            Verdict::Delivered => {
                self.pop_front();
                Answer::Delivered { sequence }
            }
            Verdict::Refused => {
                let start_unix_ms = front.start_unix_ms;
                let requests = self.pop_front();
                Answer::Refused(self.drop_batch(sequence, requests, start_unix_ms))
            }
        }
    }

    /// Forgets a call that has been outstanding longer than `max_wait_ms`, so the batch is sent
    /// again (same sequence) instead of blocking the queue forever. Returns whether it did.
    pub fn expire(&mut self, now_ms: u64, max_wait_ms: u64) -> bool {
        let expired = self
            .in_flight
            .as_ref()
            .is_some_and(|f| now_ms.saturating_sub(f.sent_ms) > max_wait_ms);
        if expired {
            self.in_flight = None;
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    fn pop_front(&mut self) -> u64 {
        self.front_sent = false;
        match self.queue.pop_front() {
            Some(p) => {
                self.queued_bytes -= p.body.len();
                p.requests
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plover_wire::{Role, SeriesDelta, SeriesKey};

    fn limits(max_batches: usize, max_bytes: usize) -> BufferLimits {
        BufferLimits {
            max_batches,
            max_bytes,
        }
    }

    /// A batch with `requests` requests in one series.
    fn batch(requests: u64) -> Batch {
        let mut delta = SeriesDelta {
            requests,
            ..Default::default()
        };
        delta.duration.record_n(1_000, requests);
        let key = SeriesKey::answered("demo", "app", "", "v1", Role::Stable, 200);
        Batch {
            gateway: "gw".into(),
            instance: "i".into(),
            series: vec![(key, delta)],
            ..Batch::default()
        }
    }

    fn push(outbox: &mut Outbox, requests: u64) -> Vec<Dropped> {
        let mut b = batch(requests);
        b.dropped_requests = outbox.take_dropped();
        outbox.push(&mut b)
    }

    fn send(outbox: &mut Outbox, token: u32) -> u64 {
        let seq = outbox.ready().map(|p| p.sequence).unwrap();
        outbox.sent(token, 0);
        seq
    }

    fn decoded_sequence(outbox: &Outbox) -> u64 {
        Batch::decode(&outbox.ready().unwrap().body)
            .unwrap()
            .sequence
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(Some(200)), Verdict::Delivered);
        assert_eq!(Verdict::of(Some(204)), Verdict::Delivered);
        for retry in [
            None,
            Some(500),
            Some(503),
            Some(504),
            Some(408),
            Some(429),
            Some(302),
        ] {
            assert_eq!(Verdict::of(retry), Verdict::Retry, "{retry:?}");
        }
        for refused in [400, 401, 403, 404, 413, 422] {
            assert_eq!(Verdict::of(Some(refused)), Verdict::Refused, "{refused}");
        }
    }

    #[test]
    fn sequences_start_at_one_and_are_encoded() {
        let mut outbox = Outbox::new(&limits(10, 1 << 20));
        push(&mut outbox, 1);
        push(&mut outbox, 1);
        assert_eq!(decoded_sequence(&outbox), 1);
        assert_eq!(send(&mut outbox, 7), 1);
        assert_eq!(
            outbox.answer(7, Some(200)),
            Answer::Delivered { sequence: 1 }
        );
        assert_eq!(decoded_sequence(&outbox), 2);
    }

    #[test]
    fn one_call_in_flight_at_a_time() {
        let mut outbox = Outbox::new(&limits(10, 1 << 20));
        push(&mut outbox, 1);
        push(&mut outbox, 1);
        send(&mut outbox, 1);
        assert!(outbox.ready().is_none());
        assert_eq!(
            outbox.answer(1, Some(200)),
            Answer::Delivered { sequence: 1 }
        );
        // The backlog drains without waiting for a tick.
        assert_eq!(send(&mut outbox, 2), 2);
    }

    #[test]
    fn server_errors_and_timeouts_keep_the_batch_and_its_sequence() {
        let mut outbox = Outbox::new(&limits(10, 1 << 20));
        push(&mut outbox, 5);
        send(&mut outbox, 1);
        assert_eq!(outbox.answer(1, Some(503)), Answer::Retry { sequence: 1 });
        assert_eq!(send(&mut outbox, 2), 1);
        assert_eq!(outbox.answer(2, None), Answer::Retry { sequence: 1 });
        push(&mut outbox, 3);
        assert_eq!(send(&mut outbox, 3), 1);
        assert_eq!(
            outbox.answer(3, Some(200)),
            Answer::Delivered { sequence: 1 }
        );
        assert_eq!(decoded_sequence(&outbox), 2);
        assert_eq!(outbox.take_dropped(), 0);
    }

    #[test]
    fn refused_batches_are_dropped_and_reported_in_the_next_batch() {
        let mut outbox = Outbox::new(&limits(10, 1 << 20));
        push(&mut outbox, 5);
        send(&mut outbox, 1);
        assert_eq!(
            outbox.answer(1, Some(401)),
            Answer::Refused(Dropped {
                sequence: 1,
                requests: 5
            })
        );
        assert!(outbox.is_empty());
        push(&mut outbox, 2);
        let next = Batch::decode(&outbox.ready().unwrap().body).unwrap();
        assert_eq!(
            (next.sequence, next.dropped_requests, next.requests()),
            (2, 5, 2)
        );
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut outbox = Outbox::new(&limits(2, 1 << 20));
        assert!(push(&mut outbox, 1).is_empty());
        assert!(push(&mut outbox, 2).is_empty());
        assert_eq!(
            push(&mut outbox, 3),
            [Dropped {
                sequence: 1,
                requests: 1
            }]
        );
        assert_eq!(outbox.len(), 2);
        // Sequence 4 carries the drop of sequence 1; dropping it later loses both.
        assert_eq!(
            push(&mut outbox, 4),
            [Dropped {
                sequence: 2,
                requests: 2
            }]
        );
        let carried: Vec<_> = outbox
            .queue
            .iter()
            .map(|p| (p.sequence, p.requests))
            .collect();
        assert_eq!(carried, [(3, 3), (4, 5)]);
        assert_eq!(
            push(&mut outbox, 0),
            [Dropped {
                sequence: 3,
                requests: 3
            }]
        );
        assert_eq!(outbox.take_dropped(), 3);
    }

    #[test]
    fn the_batch_in_flight_is_never_evicted() {
        let mut outbox = Outbox::new(&limits(2, 1 << 20));
        push(&mut outbox, 1);
        send(&mut outbox, 9);
        push(&mut outbox, 2);
        assert_eq!(
            push(&mut outbox, 3),
            [Dropped {
                sequence: 2,
                requests: 2
            }]
        );
        assert_eq!(
            outbox.answer(9, Some(200)),
            Answer::Delivered { sequence: 1 }
        );
        assert_eq!(decoded_sequence(&outbox), 3);
    }

    #[test]
    fn byte_bound_evicts_too() {
        let one = batch(1).encode().len();
        let mut outbox = Outbox::new(&limits(100, one * 2 + one / 2));
        push(&mut outbox, 1);
        push(&mut outbox, 1);
        assert_eq!(push(&mut outbox, 1).len(), 1);
        assert!(outbox.queued_bytes <= one * 2 + one / 2);
    }

    #[test]
    fn a_batch_larger_than_the_buffer_is_dropped_at_once() {
        let mut outbox = Outbox::new(&limits(10, 8));
        assert_eq!(
            push(&mut outbox, 4),
            [Dropped {
                sequence: 1,
                requests: 4
            }]
        );
        assert!(outbox.is_empty());
        assert_eq!(outbox.take_dropped(), 4);
    }

    #[test]
    fn a_lost_call_expires_and_the_batch_goes_again_with_the_same_sequence() {
        let mut outbox = Outbox::new(&limits(10, 1 << 20));
        push(&mut outbox, 1);
        outbox.sent(1, 1_000);
        assert!(!outbox.expire(3_000, 5_000));
        assert!(outbox.expire(7_000, 5_000));
        assert_eq!(send(&mut outbox, 2), 1);
        // The first call's late answer must not pop the batch now in flight as call 2.
        assert_eq!(outbox.answer(1, Some(200)), Answer::Stale);
        assert!(outbox.in_flight());
        assert_eq!(
            outbox.answer(2, Some(200)),
            Answer::Delivered { sequence: 1 }
        );
    }

    #[test]
    fn a_batch_sent_once_is_never_evicted_even_after_its_call_timed_out() {
        // The exporter hangs past the callout timeout: the call ends without an answer, yet the
        // exporter may apply the batch when it resumes. Evicting it then would report its
        // requests as dropped although they were stored (issue 17, item 2).
        let mut outbox = Outbox::new(&limits(2, 1 << 20));
        push(&mut outbox, 1);
        send(&mut outbox, 1);
        assert_eq!(outbox.answer(1, None), Answer::Retry { sequence: 1 });
        push(&mut outbox, 2);
        assert_eq!(
            push(&mut outbox, 3),
            [Dropped {
                sequence: 2,
                requests: 2
            }]
        );
        // The same after a lost call expired.
        outbox.sent(2, 0);
        assert!(outbox.expire(60_000, 5_000));
        assert_eq!(
            push(&mut outbox, 4),
            [Dropped {
                sequence: 3,
                requests: 3
            }]
        );
        assert_eq!(send(&mut outbox, 3), 1);
        assert_eq!(
            outbox.answer(3, Some(200)),
            Answer::Delivered { sequence: 1 }
        );
        // Only never-sent batches were counted, 2 + 3 requests, not batch 1's: batch 4 carries
        // the 2, the next batch the 3.
        let next = Batch::decode(&outbox.ready().unwrap().body).unwrap();
        assert_eq!((next.sequence, next.dropped_requests), (4, 2));
        assert_eq!(outbox.take_dropped(), 3);
    }

    #[test]
    fn a_drop_report_spans_the_interval_the_lost_requests_belong_to() {
        let mut outbox = Outbox::new(&limits(1, 1 << 20));
        let at = |outbox: &mut Outbox, start: u64| {
            let mut b = batch(1);
            b.start_unix_ms = start;
            b.end_unix_ms = start + 1_000;
            b.dropped_requests = outbox.take_dropped();
            outbox.push(&mut b)
        };
        assert_eq!(outbox.take_dropped_since(), None);
        at(&mut outbox, 10_000);
        at(&mut outbox, 11_000); // drops the batch of 10 s
        at(&mut outbox, 12_000); // drops the one of 11 s, which carried the first drop
        assert_eq!(outbox.take_dropped_since(), Some(10_000));
        assert_eq!(outbox.take_dropped_since(), None);
    }
}
