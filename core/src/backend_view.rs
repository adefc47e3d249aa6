//! A worker's view of one upstream's backends: weight, active health, passive
//! outlier ejection, circuit breaker, in-flight count and latency EWMA.
//!
//! Owns per-backend state only; it does no I/O, reads no clock (every method
//! that depends on time takes `now`) and shares nothing. Each worker keeps
//! its own `BackendView` per upstream and learns what the other workers saw
//! through [`BackendView::apply_remote`] and [`BackendView::apply_health`],
//! fed from gossip (see [`crate::gossip`]). The balancing algorithms in
//! [`crate::balance`] read it through `&BackendView`.
//!
//! Availability is a cached flag per backend, recomputed by
//! [`BackendView::refresh`] (O(1) unless an ejection or an open breaker has
//! just expired). Every `&mut` method that takes `now` refreshes; the proxy
//! calls `refresh(now)` before a pick so that an ejection that ran out while
//! no request ended is noticed.

use std::time::{Duration, Instant};

/// Linkerd's and Finagle's default EWMA decay: long enough to smooth noise,
/// short enough that a backend that recovers is tried again within seconds.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for a backend never measured: a same-datacenter HTTP
/// round trip. Zero would make a new backend look infinitely fast and
/// p2c would flood it (Linkerd starts at a default RTT for the same reason).
pub const DEFAULT_EWMA_INITIAL_US: f64 = 1_000.0;
/// A failure counts as a latency sample this many times the current EWMA, so
/// that a backend failing fast does not look fast to p2c (Finagle penalises
/// failures the same way).
pub const FAILURE_PENALTY_FACTOR: f64 = 4.0;
/// Failure penalties alone never push the EWMA past 1 s: enough to lose
/// every p2c draw against a working backend, little enough that the
/// read-time decay brings it back within a few decay times.
pub const FAILURE_PENALTY_MAX_US: f64 = 1_000_000.0;
/// Caps the EWMA so repeated failure penalties cannot grow it without bound.
pub const EWMA_MAX_US: f64 = 60_000_000.0;

/// Result of one request to a backend, as seen by the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A response head arrived (any status below 500).
    Success { latency_us: u64 },
    /// The TCP connect failed or timed out.
    ConnectFailure,
    /// The connection broke before a complete response head.
    Reset,
    /// The backend answered 5xx.
    Status5xx,
    /// No response head within the response timeout.
    Timeout,
    /// The request ended for a reason that says nothing about the backend
    /// (the client went away, a retry elsewhere won): releases the in-flight
    /// slot and counts neither as success nor failure.
    Aborted,
}

impl Outcome {
    /// Counts towards outlier ejection and the circuit breaker.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Status5xx | Outcome::Timeout
        )
    }
}

/// An active health change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

/// Active health of one backend: `rise` consecutive successful probes make
/// an unhealthy backend healthy, `fall` consecutive failures make a healthy
/// one unhealthy (HAProxy's and nginx's rise/fall). Starts healthy so a
/// freshly started proxy serves before the first probe completes.
#[derive(Debug, Clone)]
pub struct HealthState {
    healthy: bool,
    rise: u32,
    fall: u32,
    /// Consecutive probes disagreeing with `healthy`.
    streak: u32,
}

impl HealthState {
    /// `rise` and `fall` are at least 1 (0 is treated as 1).
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState {
            healthy: true,
            rise: rise.max(1),
            fall: fall.max(1),
            streak: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn record_probe(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.healthy = ok;
        Some(if ok {
            Transition::BecameHealthy
        } else {
            Transition::BecameUnhealthy
        })
    }
}

/// Passive outlier detection (Envoy's consecutive-5xx detector with its
/// `max_ejection_percent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive failures that eject a backend; 0 disables ejection.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; the n-th lasts n times as long.
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// At most this share of the backends is ejected at once (at least one
    /// when above 0%); 0 disables ejection.
    pub max_ejection_percent: u8,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Circuit breaker limits for one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Requests in flight at once (this worker's plus what the others
    /// reported); at the limit the backend takes no more.
    pub max_pending: u32,
    /// Upstream connections open at once (idle or busy; this worker's plus
    /// what the others reported). The data plane owns the connections, so it
    /// counts its own and asks [`BackendView::may_connect`] before opening one.
    pub max_connections: u32,
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// How long an open breaker refuses before letting one probe through.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            max_pending: 1024,
            max_connections: 1024,
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Refusing until `until`; then the next request is let through as a probe.
    Open {
        until: Instant,
    },
    /// The probe is in flight; everything else is refused until it ends.
    HalfOpen,
}

/// Per-backend circuit breaker: opens after `consecutive_failures`, stays
/// open `open_for`, then lets exactly one request through (half-open): its
/// success closes the breaker, its failure opens it again. Also refuses while
/// `max_pending` requests are in flight. The caller owns the pending count
/// (the view's in-flight), so the breaker keeps no counter that could drift.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
    failures: u32,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        CircuitBreaker {
            policy,
            state: BreakerState::Closed,
            failures: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a new request may start with `pending` requests in flight.
    pub fn allows(&self, pending: u32, now: Instant) -> bool {
        if pending >= self.policy.max_pending {
            return false;
        }
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen => false,
        }
    }

    /// A request starts: an expired open breaker turns half-open and this
    /// request is its probe.
    pub fn on_start(&mut self, now: Instant) {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen;
            }
        }
    }

    /// A request ended. Returns the new state when it changed.
    pub fn on_end(&mut self, outcome: Outcome, now: Instant) -> Option<BreakerState> {
        let before = self.state;
        match (self.state, outcome) {
            (_, Outcome::Aborted) => {
                // The probe told us nothing: let the next request probe.
                if self.state == BreakerState::HalfOpen {
                    self.state = BreakerState::Open { until: now };
                }
            }
            (BreakerState::HalfOpen, o) if o.is_failure() => self.open(now),
            (BreakerState::HalfOpen, _) => {
                self.state = BreakerState::Closed;
                self.failures = 0;
            }
            (BreakerState::Closed, o) if o.is_failure() => {
                self.failures += 1;
                if self.failures >= self.policy.consecutive_failures.max(1) {
                    self.open(now);
                }
            }
            (BreakerState::Closed, _) => self.failures = 0,
            // A request that started before the breaker opened: its result
            // is old news.
            (BreakerState::Open { .. }, _) => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.policy.open_for,
        };
        self.failures = 0;
    }

    /// When an open breaker stops refusing.
    fn open_until(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { until } => Some(until),
            _ => None,
        }
    }
}

/// What one worker tells the others about one backend each gossip tick
/// (built by [`BackendView::take_local_delta`], applied by
/// [`BackendView::apply_remote`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RemoteDelta {
    /// Successful requests since the last delta.
    pub successes: u32,
    /// Failed requests since the last delta.
    pub failures: u32,
    /// Failures since the sender's last success (its current streak), capped
    /// at `failures`: how far the node-wide streak grows.
    pub trailing_failures: u32,
    /// The sender's requests in flight now (a level, not a delta).
    pub in_flight: u32,
    /// The sender's latency EWMA in µs; 0 when it has no sample.
    pub ewma_us: f64,
    /// The sender's open connections to the backend (a level). Left 0 by
    /// [`BackendView::take_local_delta`]: the data plane, which owns the
    /// connections, fills it in.
    pub connections: u32,
}

/// How a [`BackendView`] weighs latency and ejects outliers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewConfig {
    pub outlier: OutlierPolicy,
    /// `None`: no circuit breaker.
    pub breaker: Option<BreakerPolicy>,
    /// Time constant of the latency EWMA: a sample `decay` old weighs 1/e.
    pub ewma_decay: Duration,
    pub ewma_initial_us: f64,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            outlier: OutlierPolicy::default(),
            breaker: None,
            ewma_decay: DEFAULT_EWMA_DECAY,
            ewma_initial_us: DEFAULT_EWMA_INITIAL_US,
        }
    }
}

/// One backend as the view is built: a stable identity (the Maglev table
/// hashes it, so every worker must pass the same bytes, e.g. the address
/// text) and its weight (`0` is treated as 1).
#[derive(Debug, Clone, Copy)]
pub struct BackendSpec<'a> {
    pub id: &'a [u8],
    pub weight: u32,
    /// Holds a backend: `false` for a DNS name's slot with no address yet,
    /// which is never available and counts for nothing.
    pub present: bool,
}

#[derive(Debug, Clone)]
struct BackendState {
    id: Box<[u8]>,
    weight: u32,
    /// Slot holds a backend (see [`BackendSpec::present`]).
    present: bool,
    /// Active health, from this worker's probes or from gossip.
    healthy: bool,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// When the last ejection ended (for decaying `times_ejected`).
    ejection_ended: Option<Instant>,
    times_ejected: u32,
    breaker: Option<CircuitBreaker>,
    in_flight: u32,
    /// Sum of the other workers' reported in-flight counts.
    remote_in_flight: u32,
    /// Sum of the other workers' reported open connections.
    remote_connections: u32,
    ewma_us: f64,
    ewma_stamp: Option<Instant>,
    /// Counted since the last `take_local_delta`.
    local_successes: u32,
    local_failures: u32,
    local_trailing_failures: u32,
    /// Cached by `refresh`.
    available: bool,
}

/// A worker's view of one upstream's backends. Backends are indexed
/// `0..len()` in config order.
#[derive(Debug, Clone)]
pub struct BackendView {
    backends: Vec<BackendState>,
    config: ViewConfig,
    /// `remote_in_flight[b * workers + w]`: the last level worker `w` reported.
    remote_in_flight: Vec<u32>,
    /// `remote_connections[b * workers + w]`, likewise.
    remote_connections: Vec<u32>,
    workers: usize,
    /// Earliest instant an ejection or open breaker runs out.
    next_expiry: Option<Instant>,
    /// The latest `now` any method was given: what `ewma_us` decays to.
    clock: Option<Instant>,
    available_count: usize,
    /// Every healthy backend is ejected: ejections are ignored (Envoy's
    /// panic mode) so that passive detection alone never empties the pool.
    panic: bool,
    total_weight_available: u64,
}

impl BackendState {
    fn fresh(spec: &BackendSpec<'_>, config: &ViewConfig) -> Self {
        BackendState {
            id: spec.id.into(),
            weight: spec.weight.max(1),
            present: spec.present,
            healthy: true,
            consecutive_failures: 0,
            ejected_until: None,
            ejection_ended: None,
            times_ejected: 0,
            breaker: config.breaker.map(CircuitBreaker::new),
            in_flight: 0,
            remote_in_flight: 0,
            remote_connections: 0,
            ewma_us: config.ewma_initial_us,
            ewma_stamp: None,
            local_successes: 0,
            local_failures: 0,
            local_trailing_failures: 0,
            available: spec.present,
        }
    }
}

impl BackendView {
    /// A view of `backends`, for a node of `workers` workers (sizes the
    /// per-worker in-flight table; at least 1). Every backend starts healthy.
    pub fn new(backends: &[BackendSpec<'_>], workers: usize, config: ViewConfig) -> Self {
        let workers = workers.max(1);
        let mut view = BackendView {
            backends: backends
                .iter()
                .map(|spec| BackendState::fresh(spec, &config))
                .collect(),
            config,
            remote_in_flight: vec![0; backends.len() * workers],
            remote_connections: vec![0; backends.len() * workers],
            workers,
            next_expiry: None,
            clock: None,
            available_count: 0,
            panic: false,
            total_weight_available: 0,
        };
        view.recompute(None);
        view
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn id(&self, b: usize) -> &[u8] {
        &self.backends[b].id
    }

    pub fn weight(&self, b: usize) -> u32 {
        self.backends[b].weight
    }

    /// Whether slot `b` holds a backend (see [`BackendSpec::present`]).
    pub fn is_present(&self, b: usize) -> bool {
        self.backends[b].present
    }

    /// Puts a new backend in slot `b` (present or not): its health,
    /// ejection, breaker and latency start afresh, as for a backend never
    /// seen. Requests still in flight to the slot's previous backend end
    /// through [`on_request_end`](Self::on_request_end) as usual.
    pub fn replace(&mut self, b: usize, spec: &BackendSpec<'_>, now: Instant) {
        let s = &mut self.backends[b];
        let in_flight = s.in_flight;
        let remote = (s.remote_in_flight, s.remote_connections);
        *s = BackendState::fresh(spec, &self.config);
        // Levels, not history: they drain as the old requests end.
        s.in_flight = in_flight;
        (s.remote_in_flight, s.remote_connections) = remote;
        self.recompute(Some(now));
    }

    /// Changes the weight of the backend in slot `b`, keeping its state.
    pub fn set_weight(&mut self, b: usize, weight: u32, now: Instant) {
        if self.backends[b].weight != weight.max(1) {
            self.backends[b].weight = weight.max(1);
            self.recompute(Some(now));
        }
    }

    /// This worker's requests in flight to `b`.
    pub fn in_flight(&self, b: usize) -> u32 {
        self.backends[b].in_flight
    }

    /// Node-wide in-flight estimate: this worker's count plus the others'
    /// last reported levels.
    pub fn load(&self, b: usize) -> u32 {
        let s = &self.backends[b];
        s.in_flight.saturating_add(s.remote_in_flight)
    }

    /// Latency EWMA in µs as of the view's clock (the latest `now` it was
    /// given). An EWMA above the initial value also decays while no sample
    /// arrives (tower's `PeakEwma` decays at read time the same way): p2c
    /// never picks a penalised backend, so without this it would get no new
    /// samples and stay penalised for good.
    pub fn ewma_us(&self, b: usize) -> f64 {
        let s = &self.backends[b];
        let initial = self.config.ewma_initial_us;
        match (s.ewma_stamp, self.clock) {
            (Some(stamp), Some(clock)) if s.ewma_us > initial && clock > stamp => {
                let elapsed = clock.duration_since(stamp).as_secs_f64();
                let tau = self.config.ewma_decay.as_secs_f64().max(1e-9);
                initial + (s.ewma_us - initial) * (-elapsed / tau).exp()
            }
            _ => s.ewma_us,
        }
    }

    /// Active health (probes or gossip).
    pub fn is_healthy(&self, b: usize) -> bool {
        self.backends[b].healthy
    }

    /// Passively ejected at `now`.
    pub fn is_ejected(&self, b: usize, now: Instant) -> bool {
        self.backends[b].ejected_until.is_some_and(|t| now < t)
    }

    pub fn breaker_state(&self, b: usize) -> Option<BreakerState> {
        self.backends[b].breaker.as_ref().map(CircuitBreaker::state)
    }

    /// Availability as of the last [`refresh`](Self::refresh): what the
    /// balancers read.
    pub fn available(&self, b: usize) -> bool {
        self.backends[b].available
    }

    /// Number of available backends as of the last refresh.
    pub fn available_cached_count(&self) -> usize {
        self.available_count
    }

    /// Sum of the available backends' weights as of the last refresh.
    pub fn available_weight(&self) -> u64 {
        self.total_weight_available
    }

    /// Whether `b` may take a request at `now`: actively healthy, not ejected
    /// (unless every healthy backend is, see the panic rule), and its breaker
    /// admits one more request.
    pub fn is_available(&mut self, b: usize, now: Instant) -> bool {
        self.refresh(now);
        self.backends[b].available
    }

    /// Available backends at `now`; 0 means the proxy answers 503.
    pub fn available_count(&mut self, now: Instant) -> usize {
        self.refresh(now);
        self.available_count
    }

    /// Expires ejections and open breakers that ran out by `now` and updates
    /// the cached availability. O(1) when nothing expired.
    pub fn refresh(&mut self, now: Instant) {
        if self.clock.is_none_or(|c| now > c) {
            self.clock = Some(now);
        }
        if self.next_expiry.is_some_and(|t| now >= t) {
            self.recompute(Some(now));
        }
    }

    /// A request to `b` starts (after a pick). Counts it in flight and, with
    /// a breaker whose open time is over, makes it the half-open probe.
    pub fn on_request_start(&mut self, b: usize, now: Instant) {
        let s = &mut self.backends[b];
        s.in_flight = s.in_flight.saturating_add(1);
        if let Some(breaker) = &mut s.breaker {
            breaker.on_start(now);
            self.update_one(b, now);
        }
    }

    /// A request to `b` ended: releases its in-flight slot, feeds the EWMA,
    /// the outlier detector and the breaker.
    pub fn on_request_end(&mut self, b: usize, outcome: Outcome, now: Instant) {
        let config = self.config;
        let s = &mut self.backends[b];
        s.in_flight = s.in_flight.saturating_sub(1);
        let mut changed = false;
        if let Some(breaker) = &mut s.breaker {
            changed |= breaker.on_end(outcome, now).is_some();
        }
        match outcome {
            Outcome::Success { latency_us } => {
                observe_ewma(s, latency_us as f64, now, config.ewma_decay);
                s.consecutive_failures = 0;
                s.local_successes = s.local_successes.saturating_add(1);
                s.local_trailing_failures = 0;
            }
            Outcome::Aborted => {}
            _ => {
                let penalty = (s.ewma_us * FAILURE_PENALTY_FACTOR)
                    .min(FAILURE_PENALTY_MAX_US)
                    .max(s.ewma_us);
                observe_ewma(s, penalty, now, config.ewma_decay);
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.local_failures = s.local_failures.saturating_add(1);
                s.local_trailing_failures = s.local_trailing_failures.saturating_add(1);
                changed |= self.maybe_eject(b, now);
            }
        }
        if changed {
            self.recompute(Some(now));
        } else {
            self.refresh(now);
            self.update_one(b, now);
        }
    }

    /// Active health from this worker's prober or from gossip.
    pub fn apply_health(&mut self, b: usize, healthy: bool, now: Instant) {
        if self.backends[b].healthy != healthy {
            let s = &mut self.backends[b];
            s.healthy = healthy;
            if healthy {
                // Envoy's successful_active_health_check_uneject_host: a
                // backend that passes its checks again is trusted again,
                // rather than sitting out an ejection earned while down.
                s.ejected_until = None;
                s.consecutive_failures = 0;
            }
            self.recompute(Some(now));
        }
    }

    /// What worker `from` reported about `b` (see [`RemoteDelta`]). Its
    /// in-flight level replaces the one it reported before; its latency
    /// counts as one EWMA sample; its failures extend the node-wide streak
    /// and may eject `b` here too.
    pub fn apply_remote(&mut self, from: usize, b: usize, delta: &RemoteDelta, now: Instant) {
        let config = self.config;
        if from < self.workers {
            let slot = &mut self.remote_in_flight[b * self.workers + from];
            let s = &mut self.backends[b];
            s.remote_in_flight = s
                .remote_in_flight
                .saturating_sub(*slot)
                .saturating_add(delta.in_flight);
            *slot = delta.in_flight;
            let slot = &mut self.remote_connections[b * self.workers + from];
            s.remote_connections = s
                .remote_connections
                .saturating_sub(*slot)
                .saturating_add(delta.connections);
            *slot = delta.connections;
        }
        let s = &mut self.backends[b];
        if delta.successes > 0 && delta.ewma_us > 0.0 {
            observe_ewma(s, delta.ewma_us.min(EWMA_MAX_US), now, config.ewma_decay);
        }
        if delta.successes > 0 {
            // The sender saw a success, so the streak restarted there; only
            // its trailing failures carry on.
            s.consecutive_failures = delta.trailing_failures.min(delta.failures);
        } else {
            s.consecutive_failures = s.consecutive_failures.saturating_add(delta.failures);
        }
        if delta.failures > 0 && self.maybe_eject(b, now) {
            self.recompute(Some(now));
        } else {
            self.refresh(now);
            self.update_one(b, now);
        }
    }

    /// Whether this worker, holding `local` open connections to `b`, may open
    /// one more: always without a breaker, else while the node-wide count
    /// (`local` plus what the others last reported) is under
    /// `max_connections`.
    pub fn may_connect(&self, b: usize, local: u32) -> bool {
        match self.config.breaker {
            None => true,
            Some(policy) => {
                local.saturating_add(self.backends[b].remote_connections) < policy.max_connections
            }
        }
    }

    /// Open connections to `b` the other workers last reported.
    pub fn remote_connections(&self, b: usize) -> u32 {
        self.backends[b].remote_connections
    }

    /// This worker's news about `b` since the last call, for gossip; resets
    /// the counters.
    pub fn take_local_delta(&mut self, b: usize) -> RemoteDelta {
        let ewma_us = self.ewma_us(b);
        let s = &mut self.backends[b];
        let delta = RemoteDelta {
            successes: s.local_successes,
            failures: s.local_failures,
            trailing_failures: s.local_trailing_failures.min(s.local_failures),
            in_flight: s.in_flight,
            ewma_us: if s.ewma_stamp.is_some() { ewma_us } else { 0.0 },
            connections: 0,
        };
        s.local_successes = 0;
        s.local_failures = 0;
        s.local_trailing_failures = 0;
        delta
    }

    /// Ejects `b` if its streak reached the threshold and the pool allows
    /// one more ejection. Returns whether it ejected.
    fn maybe_eject(&mut self, b: usize, now: Instant) -> bool {
        let policy = self.config.outlier;
        if policy.consecutive_failures == 0 || policy.max_ejection_percent == 0 {
            return false;
        }
        if self.backends[b].consecutive_failures < policy.consecutive_failures
            || self.is_ejected(b, now)
        {
            return false;
        }
        let present = || (0..self.backends.len()).filter(|&i| self.backends[i].present);
        let n = present().count();
        let ejected = present().filter(|&i| self.is_ejected(i, now)).count();
        let cap = (n * usize::from(policy.max_ejection_percent.min(100)) / 100).max(1);
        // Passive detection never ejects the last healthy, un-ejected backend.
        let others_serving = present()
            .filter(|&i| i != b && self.backends[i].healthy && !self.is_ejected(i, now))
            .count();
        if ejected >= cap || others_serving == 0 {
            return false;
        }
        let s = &mut self.backends[b];
        // Envoy decrements the multiplier while a backend stays in; here the
        // same happens lazily: one step per base time spent un-ejected.
        if let Some(ended) = s.ejection_ended {
            let base = policy.base_ejection_time.as_nanos().max(1);
            let quiet = now.saturating_duration_since(ended).as_nanos() / base;
            s.times_ejected = s
                .times_ejected
                .saturating_sub(u32::try_from(quiet).unwrap_or(u32::MAX));
        }
        s.times_ejected = s.times_ejected.saturating_add(1);
        let time = policy
            .base_ejection_time
            .saturating_mul(s.times_ejected)
            .min(policy.max_ejection_time.max(policy.base_ejection_time));
        s.ejected_until = Some(now + time);
        s.consecutive_failures = 0;
        true
    }

    /// Re-evaluates `b` alone after a change that cannot affect the others
    /// (its breaker or its pending count): O(1) on the request path.
    fn update_one(&mut self, b: usize, now: Instant) {
        let panic = self.panic;
        let s = &mut self.backends[b];
        let Some(breaker) = &s.breaker else { return };
        if let Some(until) = breaker.open_until().filter(|&t| now < t) {
            self.next_expiry = Some(self.next_expiry.map_or(until, |t| t.min(until)));
        }
        let pending = s.in_flight.saturating_add(s.remote_in_flight);
        let available = s.present
            && s.healthy
            && (s.ejected_until.is_none() || panic)
            && breaker.allows(pending, now);
        if available != s.available {
            s.available = available;
            let weight = u64::from(s.weight);
            if available {
                self.available_count += 1;
                self.total_weight_available += weight;
            } else {
                self.available_count -= 1;
                self.total_weight_available -= weight;
            }
        }
    }

    /// Recomputes every cached flag. `now = None` at construction, when
    /// nothing can be ejected yet.
    fn recompute(&mut self, now: Option<Instant>) {
        let mut next_expiry: Option<Instant> = None;
        let mut healthy = 0usize;
        let mut healthy_unejected = 0usize;
        for s in &mut self.backends {
            if let (Some(until), Some(now)) = (s.ejected_until, now) {
                if now >= until {
                    s.ejected_until = None;
                    s.ejection_ended = Some(until);
                }
            }
            if let Some(until) = s.ejected_until {
                next_expiry = Some(next_expiry.map_or(until, |t| t.min(until)));
            }
            if let Some(until) = s.breaker.as_ref().and_then(CircuitBreaker::open_until) {
                if now.is_none_or(|now| now < until) {
                    next_expiry = Some(next_expiry.map_or(until, |t| t.min(until)));
                }
            }
            if s.present && s.healthy {
                healthy += 1;
                if s.ejected_until.is_none() {
                    healthy_unejected += 1;
                }
            }
        }
        self.panic = healthy > 0 && healthy_unejected == 0;
        self.next_expiry = next_expiry;
        let mut count = 0;
        let mut weight = 0u64;
        for s in &mut self.backends {
            let breaker_ok = match (&s.breaker, now) {
                (Some(breaker), Some(now)) => {
                    let pending = s.in_flight.saturating_add(s.remote_in_flight);
                    breaker.allows(pending, now)
                }
                _ => true,
            };
            s.available =
                s.present && s.healthy && (s.ejected_until.is_none() || self.panic) && breaker_ok;
            if s.available {
                count += 1;
                weight += u64::from(s.weight);
            }
        }
        self.available_count = count;
        self.total_weight_available = weight;
    }
}

/// Peak EWMA (Finagle's `PeakEwma`, Linkerd's `tower::load::PeakEwma`): a
/// sample above the average replaces it at once, so a slowing backend is
/// avoided after one slow response; below it, the average decays towards the
/// sample with weight `1 - exp(-elapsed / decay)`, so it is time-weighted
/// and a burst of fast samples at one instant cannot wipe out a slow one.
fn observe_ewma(s: &mut BackendState, sample_us: f64, now: Instant, decay: Duration) {
    let sample_us = sample_us.clamp(0.0, EWMA_MAX_US);
    s.ewma_us = match s.ewma_stamp {
        None => sample_us,
        Some(_) if sample_us > s.ewma_us => sample_us,
        Some(stamp) => {
            let elapsed = now.saturating_duration_since(stamp).as_secs_f64();
            let tau = decay.as_secs_f64().max(1e-9);
            let w = (-elapsed / tau).exp();
            s.ewma_us * w + sample_us * (1.0 - w)
        }
    };
    s.ewma_stamp = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn specs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    pub(crate) fn view_with(weights: &[u32], config: ViewConfig) -> BackendView {
        let ids = specs(weights.len());
        let specs: Vec<BackendSpec<'_>> = ids
            .iter()
            .zip(weights)
            .map(|(id, &weight)| BackendSpec {
                id: id.as_bytes(),
                weight,
                present: true,
            })
            .collect();
        BackendView::new(&specs, 2, config)
    }

    fn fail(view: &mut BackendView, b: usize, times: u32, now: Instant) {
        for _ in 0..times {
            view.on_request_start(b, now);
            view.on_request_end(b, Outcome::Status5xx, now);
        }
    }

    #[test]
    fn health_needs_fall_failures_then_rise_successes() {
        let mut h = HealthState::new(2, 3);
        assert!(h.is_healthy());
        assert_eq!(h.record_probe(false), None);
        assert_eq!(h.record_probe(false), None);
        // A success in between restarts the count.
        assert_eq!(h.record_probe(true), None);
        assert_eq!(h.record_probe(false), None);
        assert_eq!(h.record_probe(false), None);
        assert_eq!(h.record_probe(false), Some(Transition::BecameUnhealthy));
        assert!(!h.is_healthy());
        assert_eq!(h.record_probe(false), None);
        assert_eq!(h.record_probe(true), None);
        assert_eq!(h.record_probe(true), Some(Transition::BecameHealthy));
        assert_eq!(h.record_probe(true), None);
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut h = HealthState::new(1, 1);
        assert_eq!(h.record_probe(false), Some(Transition::BecameUnhealthy));
        assert_eq!(h.record_probe(true), Some(Transition::BecameHealthy));
    }

    #[test]
    fn in_flight_counts_starts_and_ends() {
        let now = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        v.on_request_start(0, now);
        v.on_request_start(0, now);
        assert_eq!(v.in_flight(0), 2);
        v.on_request_end(0, Outcome::Aborted, now);
        assert_eq!(v.in_flight(0), 1);
        v.on_request_end(0, Outcome::Success { latency_us: 10 }, now);
        v.on_request_end(0, Outcome::Success { latency_us: 10 }, now);
        assert_eq!(v.in_flight(0), 0, "never below zero");
    }

    #[test]
    fn ewma_takes_first_sample_then_decays_towards_lower_samples() {
        let t0 = Instant::now();
        let mut v = view_with(&[1], ViewConfig::default());
        assert_eq!(v.ewma_us(0), DEFAULT_EWMA_INITIAL_US);
        v.on_request_end(0, Outcome::Success { latency_us: 500 }, t0);
        assert_eq!(v.ewma_us(0), 500.0);
        // One decay time later a lower sample weighs 1 - 1/e.
        v.on_request_end(
            0,
            Outcome::Success { latency_us: 100 },
            t0 + DEFAULT_EWMA_DECAY,
        );
        let e = std::f64::consts::E;
        let expected = 500.0 / e + 100.0 * (1.0 - 1.0 / e);
        assert!((v.ewma_us(0) - expected).abs() < 1e-6, "{}", v.ewma_us(0));
        // A fast sample at the same instant carries no weight.
        let at = t0 + DEFAULT_EWMA_DECAY;
        v.on_request_end(0, Outcome::Success { latency_us: 1 }, at);
        assert!((v.ewma_us(0) - expected).abs() < 1e-6);
    }

    #[test]
    fn ewma_jumps_to_a_slower_peak() {
        let t0 = Instant::now();
        let mut v = view_with(&[1], ViewConfig::default());
        v.on_request_end(0, Outcome::Success { latency_us: 200 }, t0);
        v.on_request_end(0, Outcome::Success { latency_us: 9_000 }, t0);
        assert_eq!(v.ewma_us(0), 9_000.0);
        v.on_request_end(0, Outcome::Timeout, t0);
        assert_eq!(v.ewma_us(0), 9_000.0 * FAILURE_PENALTY_FACTOR);
        for _ in 0..10 {
            v.on_request_end(0, Outcome::Timeout, t0);
        }
        assert_eq!(v.ewma_us(0), FAILURE_PENALTY_MAX_US);
    }

    #[test]
    fn a_penalised_ewma_decays_without_new_samples() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        v.on_request_end(
            0,
            Outcome::Success {
                latency_us: 100_000,
            },
            t0,
        );
        v.refresh(t0 + DEFAULT_EWMA_DECAY);
        let initial = DEFAULT_EWMA_INITIAL_US;
        let expected = initial + (100_000.0 - initial) / std::f64::consts::E;
        assert!((v.ewma_us(0) - expected).abs() < 1e-6, "{}", v.ewma_us(0));
        v.refresh(t0 + DEFAULT_EWMA_DECAY * 20);
        assert!(v.ewma_us(0) < initial * 1.001);
        // A fast backend's figure is not dragged up towards the initial one.
        v.on_request_end(1, Outcome::Success { latency_us: 50 }, t0);
        assert_eq!(v.ewma_us(1), 50.0);
    }

    #[test]
    fn consecutive_failures_eject_for_base_time_then_longer() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1, 1, 1], ViewConfig::default());
        fail(&mut v, 0, 4, t0);
        assert!(v.is_available(0, t0));
        fail(&mut v, 0, 1, t0);
        assert!(!v.is_available(0, t0));
        assert_eq!(v.available_count(t0), 3);
        assert!(!v.is_available(0, t0 + Duration::from_secs(29)));
        assert!(v.is_available(0, t0 + Duration::from_secs(30)));
        // Second ejection right away lasts twice as long.
        let t1 = t0 + Duration::from_secs(30);
        fail(&mut v, 0, 5, t1);
        assert!(!v.is_available(0, t1 + Duration::from_secs(59)));
        assert!(v.is_available(0, t1 + Duration::from_secs(60)));
    }

    #[test]
    fn ejection_time_is_capped() {
        let mut t = Instant::now();
        let config = ViewConfig {
            outlier: OutlierPolicy {
                consecutive_failures: 1,
                base_ejection_time: Duration::from_secs(10),
                max_ejection_time: Duration::from_secs(25),
                max_ejection_percent: 50,
            },
            ..ViewConfig::default()
        };
        let mut v = view_with(&[1, 1], config);
        let mut durations = Vec::new();
        for _ in 0..4 {
            fail(&mut v, 0, 1, t);
            let mut d = Duration::ZERO;
            while !v.is_available(0, t + d) {
                d += Duration::from_secs(1);
            }
            durations.push(d.as_secs());
            t += d;
        }
        assert_eq!(durations, [10, 20, 25, 25]);
    }

    #[test]
    fn ejection_multiplier_decays_while_backend_behaves() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        fail(&mut v, 0, 5, t0);
        let back = t0 + Duration::from_secs(30);
        // Ten base times later the multiplier is back to 1.
        let later = back + Duration::from_secs(300);
        fail(&mut v, 0, 5, later);
        assert!(!v.is_available(0, later + Duration::from_secs(29)));
        assert!(v.is_available(0, later + Duration::from_secs(30)));
    }

    #[test]
    fn success_resets_the_failure_streak() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        for _ in 0..10 {
            fail(&mut v, 0, 4, t0);
            v.on_request_end(0, Outcome::Success { latency_us: 100 }, t0);
        }
        assert!(v.is_available(0, t0));
    }

    #[test]
    fn at_most_max_ejection_percent_is_ejected() {
        let t0 = Instant::now();
        let mut v = view_with(&[1; 4], ViewConfig::default());
        for b in 0..4 {
            fail(&mut v, b, 5, t0);
        }
        // 50% of 4.
        assert_eq!(v.available_count(t0), 2);
        assert!(!v.is_available(0, t0) && !v.is_available(1, t0));
    }

    #[test]
    fn at_least_one_ejection_is_allowed_when_percent_rounds_to_zero() {
        let t0 = Instant::now();
        let config = ViewConfig {
            outlier: OutlierPolicy {
                max_ejection_percent: 10,
                ..OutlierPolicy::default()
            },
            ..ViewConfig::default()
        };
        let mut v = view_with(&[1; 3], config);
        fail(&mut v, 1, 5, t0);
        fail(&mut v, 2, 5, t0);
        assert_eq!(v.available_count(t0), 2);
        assert!(!v.is_available(1, t0));
    }

    #[test]
    fn passive_detection_never_ejects_the_last_backend() {
        let t0 = Instant::now();
        let config = ViewConfig {
            outlier: OutlierPolicy {
                max_ejection_percent: 100,
                ..OutlierPolicy::default()
            },
            ..ViewConfig::default()
        };
        let mut v = view_with(&[1, 1], config);
        fail(&mut v, 0, 5, t0);
        fail(&mut v, 1, 5, t0);
        assert_eq!(v.available_count(t0), 1);
        assert!(v.is_available(1, t0));
        let mut single = view_with(&[1], config);
        fail(&mut single, 0, 50, t0);
        assert!(single.is_available(0, t0));
    }

    #[test]
    fn ejected_backend_serves_again_when_every_other_goes_unhealthy() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        fail(&mut v, 0, 5, t0);
        assert!(!v.is_available(0, t0));
        v.apply_health(1, false, t0);
        // Panic mode: ejection is ignored rather than answering 503.
        assert!(v.is_available(0, t0));
        assert_eq!(v.available_count(t0), 1);
        v.apply_health(0, false, t0);
        assert_eq!(v.available_count(t0), 0);
    }

    #[test]
    fn unhealthy_backends_are_unavailable_until_healthy_again() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1, 1], ViewConfig::default());
        v.apply_health(2, false, t0);
        assert!(!v.is_available(2, t0));
        assert_eq!(v.available_count(t0), 2);
        assert_eq!(v.available_weight(), 2);
        v.apply_health(2, true, t0);
        assert!(v.is_available(2, t0));
    }

    #[test]
    fn ejection_can_be_disabled() {
        let t0 = Instant::now();
        for outlier in [
            OutlierPolicy {
                consecutive_failures: 0,
                ..OutlierPolicy::default()
            },
            OutlierPolicy {
                max_ejection_percent: 0,
                ..OutlierPolicy::default()
            },
        ] {
            let mut v = view_with(
                &[1, 1],
                ViewConfig {
                    outlier,
                    ..ViewConfig::default()
                },
            );
            fail(&mut v, 0, 100, t0);
            assert!(v.is_available(0, t0));
        }
    }

    #[test]
    fn remote_failures_extend_the_streak_and_eject() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        fail(&mut v, 0, 2, t0);
        let delta = RemoteDelta {
            failures: 3,
            trailing_failures: 3,
            ..RemoteDelta::default()
        };
        v.apply_remote(1, 0, &delta, t0);
        assert!(!v.is_available(0, t0));
    }

    #[test]
    fn remote_success_restarts_the_streak() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        fail(&mut v, 0, 4, t0);
        let delta = RemoteDelta {
            successes: 1,
            failures: 2,
            trailing_failures: 1,
            in_flight: 0,
            ewma_us: 300.0,
            connections: 0,
        };
        v.apply_remote(1, 0, &delta, t0);
        fail(&mut v, 0, 3, t0);
        assert!(v.is_available(0, t0), "1 + 3 < 5");
        fail(&mut v, 0, 1, t0);
        assert!(!v.is_available(0, t0));
    }

    #[test]
    fn remote_in_flight_replaces_the_senders_previous_level() {
        let t0 = Instant::now();
        let mut v = view_with(&[1, 1], ViewConfig::default());
        v.on_request_start(1, t0);
        let level = |n| RemoteDelta {
            in_flight: n,
            ..RemoteDelta::default()
        };
        v.apply_remote(1, 1, &level(5), t0);
        assert_eq!(v.load(1), 6);
        v.apply_remote(1, 1, &level(2), t0);
        assert_eq!(v.load(1), 3);
        assert_eq!(v.in_flight(1), 1);
        // An unknown worker id is ignored rather than indexing out of range.
        v.apply_remote(7, 1, &level(100), t0);
        assert_eq!(v.load(1), 3);
    }

    #[test]
    fn connection_limit_counts_this_worker_and_the_others_reports() {
        let t0 = Instant::now();
        let unlimited = view_with(&[1], ViewConfig::default());
        assert!(
            unlimited.may_connect(0, u32::MAX - 1),
            "no breaker, no limit"
        );
        let config = ViewConfig {
            breaker: Some(BreakerPolicy {
                max_connections: 4,
                ..BreakerPolicy::default()
            }),
            ..ViewConfig::default()
        };
        let mut v = view_with(&[1, 1], config);
        assert!(v.may_connect(0, 3));
        assert!(!v.may_connect(0, 4));
        let level = |n| RemoteDelta {
            connections: n,
            ..RemoteDelta::default()
        };
        v.apply_remote(1, 0, &level(3), t0);
        assert_eq!(v.remote_connections(0), 3);
        assert!(v.may_connect(0, 0));
        assert!(!v.may_connect(0, 1), "1 here + 3 elsewhere = 4");
        assert!(v.may_connect(1, 3), "per backend");
        // A new level replaces the sender's previous one.
        v.apply_remote(1, 0, &level(1), t0);
        assert!(v.may_connect(0, 2));
        assert!(!v.may_connect(0, 3));
        // Connections do not make a backend unavailable: requests queue for
        // them in the data plane instead.
        v.apply_remote(1, 0, &level(10), t0);
        assert!(v.is_available(0, t0));
    }

    #[test]
    fn local_delta_drains_and_reports_levels() {
        let t0 = Instant::now();
        let mut v = view_with(&[1], ViewConfig::default());
        v.on_request_start(0, t0);
        v.on_request_start(0, t0);
        v.on_request_end(0, Outcome::Success { latency_us: 250 }, t0);
        v.on_request_start(0, t0);
        v.on_request_end(0, Outcome::Reset, t0);
        let d = v.take_local_delta(0);
        assert_eq!((d.successes, d.failures, d.trailing_failures), (1, 1, 1));
        assert_eq!(d.in_flight, 1);
        assert!(d.ewma_us > 250.0, "the failure penalty raised it");
        let d = v.take_local_delta(0);
        assert_eq!((d.successes, d.failures, d.in_flight), (0, 0, 1));
    }

    #[test]
    fn no_sample_reports_zero_ewma() {
        let mut v = view_with(&[1], ViewConfig::default());
        assert_eq!(v.take_local_delta(0).ewma_us, 0.0);
    }

    // ---- circuit breaker ----

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerPolicy {
            max_pending: 3,
            max_connections: 3,
            consecutive_failures: 2,
            open_for: Duration::from_secs(10),
        })
    }

    #[test]
    fn breaker_refuses_at_max_pending() {
        let b = breaker();
        let now = Instant::now();
        assert!(b.allows(2, now));
        assert!(!b.allows(3, now));
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_half_opens_after_open_for() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert_eq!(b.on_end(Outcome::Timeout, t0), None);
        let until = t0 + Duration::from_secs(10);
        assert_eq!(
            b.on_end(Outcome::ConnectFailure, t0),
            Some(BreakerState::Open { until })
        );
        assert!(!b.allows(0, t0 + 9999 * MS));
        assert!(b.allows(0, until));
        b.on_start(until);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only the probe goes through.
        assert!(!b.allows(0, until));
        assert_eq!(
            b.on_end(Outcome::Success { latency_us: 1 }, until),
            Some(BreakerState::Closed)
        );
        assert!(b.allows(0, until));
    }

    #[test]
    fn failed_probe_reopens_the_breaker() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_end(Outcome::Reset, t0);
        b.on_end(Outcome::Reset, t0);
        let t1 = t0 + Duration::from_secs(10);
        b.on_start(t1);
        let reopened = BreakerState::Open {
            until: t1 + Duration::from_secs(10),
        };
        assert_eq!(b.on_end(Outcome::Status5xx, t1), Some(reopened));
        assert!(!b.allows(0, t1 + Duration::from_secs(5)));
    }

    #[test]
    fn aborted_probe_lets_the_next_request_probe() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_end(Outcome::Reset, t0);
        b.on_end(Outcome::Reset, t0);
        let t1 = t0 + Duration::from_secs(10);
        b.on_start(t1);
        b.on_end(Outcome::Aborted, t1);
        assert!(b.allows(0, t1));
    }

    #[test]
    fn success_between_failures_keeps_the_breaker_closed() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..10 {
            b.on_end(Outcome::Reset, t0);
            b.on_end(Outcome::Success { latency_us: 1 }, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn view_skips_a_backend_whose_breaker_is_open_or_full() {
        let t0 = Instant::now();
        let config = ViewConfig {
            breaker: Some(BreakerPolicy {
                max_pending: 2,
                max_connections: 2,
                consecutive_failures: 3,
                open_for: Duration::from_secs(10),
            }),
            outlier: OutlierPolicy {
                consecutive_failures: 0,
                ..OutlierPolicy::default()
            },
            ..ViewConfig::default()
        };
        let mut v = view_with(&[1, 1], config);
        v.on_request_start(0, t0);
        assert!(v.is_available(0, t0));
        v.on_request_start(0, t0);
        assert!(!v.is_available(0, t0), "max_pending reached");
        v.on_request_end(0, Outcome::Success { latency_us: 5 }, t0);
        assert!(v.is_available(0, t0));
        v.on_request_end(0, Outcome::Success { latency_us: 5 }, t0);

        fail(&mut v, 1, 3, t0);
        assert!(!v.is_available(1, t0));
        let t1 = t0 + Duration::from_secs(10);
        v.refresh(t1);
        assert!(v.available(1), "open time over: one probe may go");
        v.on_request_start(1, t1);
        assert!(!v.is_available(1, t1), "half-open: probe in flight");
        v.on_request_end(1, Outcome::Success { latency_us: 5 }, t1);
        assert!(v.is_available(1, t1));
    }

    #[test]
    fn remote_in_flight_counts_towards_max_pending() {
        let t0 = Instant::now();
        let config = ViewConfig {
            breaker: Some(BreakerPolicy {
                max_pending: 4,
                ..BreakerPolicy::default()
            }),
            ..ViewConfig::default()
        };
        let mut v = view_with(&[1, 1], config);
        let delta = RemoteDelta {
            in_flight: 4,
            ..RemoteDelta::default()
        };
        v.apply_remote(1, 0, &delta, t0);
        assert!(!v.is_available(0, t0));
        v.apply_remote(1, 0, &RemoteDelta::default(), t0);
        assert!(v.is_available(0, t0));
    }
}
