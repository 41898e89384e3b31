//! Store, coalescing, eviction, TTL and metrics tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::formats::{
    parse_request, ApiFormat, ChatRequest, ChatResponse, ContentBlock, FinishReason,
    ResponseExtras, Usage,
};

// --- helpers -----------------------------------------------------------------

fn request(text: &str, temperature: Option<f64>) -> ChatRequest {
    let mut body = serde_json::json!({
        "model": "chat",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": text}],
    });
    if let Some(t) = temperature {
        body["temperature"] = serde_json::json!(t);
    }
    parse_request(ApiFormat::OpenAi, body.to_string().as_bytes()).unwrap()
}

fn route() -> RouteSignature {
    RouteSignature::new("chat", 4096, [vec!["openai/gpt-4o"]])
}

fn policy() -> CachePolicy {
    CachePolicy {
        ttl: Duration::from_secs(60),
        max_entry_bytes: 1 << 20,
        cache_nondeterministic: false,
    }
}

fn access() -> Access {
    match decide(
        Some(&policy()),
        &request("x", Some(0.0)),
        &CacheControl::default(),
    ) {
        Decision::Use(a) => a,
        other => panic!("{other:?}"),
    }
}

fn answer(text: &str) -> ChatResponse {
    ChatResponse {
        id: "chatcmpl-1".into(),
        model: "gpt-4o-2024".into(),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cached_input_tokens: 0,
        },
        finish_reason: Some(FinishReason::Stop),
        stop_sequence: None,
        content: vec![ContentBlock::text(text)],
        created: Some(1),
        source: ApiFormat::OpenAi,
        extras: ResponseExtras::default(),
    }
}

fn origin() -> ResponseOrigin {
    ResponseOrigin {
        provider: "openai".into(),
        model: "gpt-4o".into(),
    }
}

fn key(n: usize) -> CacheKey {
    CacheKey::compute(
        Some("team"),
        &route(),
        &request(&format!("q{n}"), Some(0.0)),
    )
}

fn lead(l: Lookup) -> LeaderGuard {
    match l {
        Lookup::Lead(g) => g,
        other => panic!("expected Lead, got {other:?}"),
    }
}

fn hit(l: Lookup) -> Arc<CachedResponse> {
    match l {
        Lookup::Hit(e) => e,
        other => panic!("expected Hit, got {other:?}"),
    }
}

fn follow(l: Lookup) -> FollowerWait {
    match l {
        Lookup::Follow(w) => w,
        other => panic!("expected Follow, got {other:?}"),
    }
}

fn begin(cache: &ResponseCache, req: &ChatRequest, team: Option<&str>, cc: &str) -> Lookup {
    cache.begin(
        req,
        team,
        &route(),
        Some(&policy()),
        &CacheControl::parse(cc),
    )
}

// --- a tiny metrics recorder -------------------------------------------------

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + v);
    }
    fn decrement(&self, v: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) - v);
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _v: f64) {}
}

/// Records counters and gauges by `name{k=v,...}`.
#[derive(Default, Clone)]
struct TestRecorder {
    cells: Arc<Mutex<HashMap<String, Arc<Cell>>>>,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        self.cells.lock().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.cells
            .lock()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> f64 {
        self.cells
            .lock()
            .get(name)
            .map_or(0.0, |c| f64::from_bits(c.0.load(Ordering::Relaxed)))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

// --- basic flow ----------------------------------------------------------------

#[test]
fn miss_then_store_then_hit_with_metrics() {
    let rec = TestRecorder::default();
    metrics::with_local_recorder(&rec, || {
        let cache = ResponseCache::new(1 << 20);
        let req = request("What is 2+2?", Some(0.0));
        let l = begin(&cache, &req, Some("team-a"), "");
        assert_eq!(l.status(), Some(CacheStatus::Miss));
        let g = lead(l);
        assert!(g.is_coalescing());
        assert_eq!(cache.in_flight(), 1);
        let entry = g.complete(answer("4"), origin());
        assert_eq!(cache.in_flight(), 0);
        assert_eq!(entry.response.text(), "4");

        let l = begin(&cache, &req, Some("team-a"), "");
        assert_eq!(l.status(), Some(CacheStatus::Hit));
        let e = hit(l);
        assert!(Arc::ptr_eq(&e, &entry));
        assert_eq!(
            e.usage().input_tokens,
            100,
            "original usage kept for cost_saved"
        );
        assert_eq!(e.origin, origin());

        assert_eq!(rec.counter(metric_names::MISSES), 1);
        assert_eq!(rec.counter(metric_names::HITS), 1);
        assert_eq!(rec.counter(metric_names::STORES), 1);
        assert_eq!(rec.gauge(metric_names::BYTES), entry.weight_bytes() as f64);
        assert_eq!(cache.bytes(), entry.weight_bytes());
    });
}

#[test]
fn tenants_do_not_share_entries() {
    let cache = ResponseCache::new(1 << 20);
    let req = request("secret question", Some(0.0));
    lead(begin(&cache, &req, Some("team-a"), "")).complete(answer("team a's answer"), origin());
    hit(begin(&cache, &req, Some("team-a"), ""));
    // Another team, and the anonymous scope, miss.
    lead(begin(&cache, &req, Some("team-b"), "")).abandon();
    let anon = lead(begin(&cache, &req, None, ""));
    anon.complete(answer("anon"), origin());
    assert_eq!(hit(begin(&cache, &req, None, "")).response.text(), "anon");
    assert_eq!(
        hit(begin(&cache, &req, Some("team-a"), "")).response.text(),
        "team a's answer"
    );
}

#[test]
fn bypass_decisions_are_counted_and_store_nothing() {
    let rec = TestRecorder::default();
    metrics::with_local_recorder(&rec, || {
        let cache = ResponseCache::new(1 << 20);
        let hot = request("q", None);
        let l = begin(&cache, &hot, None, "");
        assert!(matches!(l, Lookup::Bypass(BypassReason::Nondeterministic)));
        assert_eq!(l.status(), Some(CacheStatus::Bypass));
        let req = request("q", Some(0.0));
        let l = begin(&cache, &req, None, "no-store");
        assert!(matches!(l, Lookup::Bypass(BypassReason::NoStore)));
        // Disabled route: no header, no metric.
        let l = cache.begin(&req, None, &route(), None, &CacheControl::default());
        assert!(matches!(l, Lookup::Disabled));
        assert_eq!(l.status(), None);
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(
            rec.counter("switchyard_cache_bypass_total{reason=nondeterministic}"),
            1
        );
        assert_eq!(
            rec.counter("switchyard_cache_bypass_total{reason=no_store}"),
            1
        );
        assert_eq!(rec.counter(metric_names::HITS), 0);
        assert_eq!(rec.counter(metric_names::MISSES), 0);
    });
}

#[test]
fn no_cache_refreshes_the_entry() {
    let rec = TestRecorder::default();
    metrics::with_local_recorder(&rec, || {
        let cache = ResponseCache::new(1 << 20);
        let req = request("q", Some(0.0));
        lead(begin(&cache, &req, None, "")).complete(answer("old"), origin());
        let g = lead(begin(&cache, &req, None, "no-cache"));
        assert_eq!(g.status(), CacheStatus::Bypass);
        assert!(
            !g.is_coalescing(),
            "a refresh does not join or lead a flight"
        );
        assert_eq!(cache.in_flight(), 0);
        g.complete(answer("new"), origin());
        assert_eq!(hit(begin(&cache, &req, None, "")).response.text(), "new");
        // max-age=0 is a refresh too.
        let g = lead(begin(&cache, &req, None, "max-age=0"));
        assert_eq!(g.status(), CacheStatus::Bypass);
        drop(g);
        assert_eq!(hit(begin(&cache, &req, None, "")).response.text(), "new");
        assert_eq!(
            rec.counter("switchyard_cache_bypass_total{reason=no_cache}"),
            2
        );
        // Replacing the entry did not double-count its bytes.
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 1);
        assert_eq!(
            cache.bytes(),
            hit(begin(&cache, &req, None, "")).weight_bytes()
        );
    });
}

// --- TTL and max-age on paused time ------------------------------------------

#[tokio::test(start_paused = true)]
async fn ttl_expiry_on_paused_time() {
    let cache = ResponseCache::new(1 << 20);
    let req = request("q", Some(0.0));
    lead(begin(&cache, &req, None, "")).complete(answer("a"), origin());
    tokio::time::advance(Duration::from_secs(59)).await;
    let e = hit(begin(&cache, &req, None, ""));
    assert_eq!(e.age(), Duration::from_secs(59));
    tokio::time::advance(Duration::from_millis(999)).await;
    hit(begin(&cache, &req, None, ""));
    tokio::time::advance(Duration::from_millis(1)).await;
    // Exactly the TTL old: expired, whatever the backing store thinks.
    let g = lead(begin(&cache, &req, None, ""));
    g.complete(answer("b"), origin());
    assert_eq!(hit(begin(&cache, &req, None, "")).response.text(), "b");
}

#[tokio::test(start_paused = true)]
async fn max_age_narrows_what_is_accepted() {
    let cache = ResponseCache::new(1 << 20);
    let req = request("q", Some(0.0));
    lead(begin(&cache, &req, None, "")).complete(answer("a"), origin());
    tokio::time::advance(Duration::from_secs(30)).await;
    hit(begin(&cache, &req, None, "max-age=30"));
    hit(begin(&cache, &req, None, "max-age=3600"));
    // Too old for this client: a miss (it leads a fresh fetch).
    let g = lead(begin(&cache, &req, None, "max-age=10"));
    assert_eq!(g.status(), CacheStatus::Miss);
    drop(g);
    // Other clients still get the entry.
    hit(begin(&cache, &req, None, ""));
    // max-age above the TTL does not extend it.
    tokio::time::advance(Duration::from_secs(30)).await;
    lead(begin(&cache, &req, None, "max-age=3600")).abandon();
}

#[test]
fn zero_ttl_coalesces_but_stores_nothing() {
    let cache = ResponseCache::new(1 << 20);
    let a = Access {
        ttl: Duration::ZERO,
        max_age: Duration::ZERO,
        ..access()
    };
    let g = lead(cache.lookup_or_lead(key(1), &a));
    let w = follow(cache.lookup_or_lead(key(1), &a));
    g.complete(answer("x"), origin());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    match rt.block_on(w.wait(Duration::from_secs(1))) {
        FollowOutcome::Hit(e) => assert_eq!(e.response.text(), "x"),
        FollowOutcome::Lead(_) => panic!("follower must get the leader's answer"),
    }
    assert_eq!(cache.entry_count(), 0);
    lead(cache.lookup_or_lead(key(1), &a)).abandon();
}

// --- size caps -------------------------------------------------------------------

#[test]
fn entry_size_cap() {
    let rec = TestRecorder::default();
    metrics::with_local_recorder(&rec, || {
        let cache = ResponseCache::new(1 << 20);
        let small = Access {
            max_entry_bytes: 2_000,
            ..access()
        };
        // Fits.
        let g = lead(cache.lookup_or_lead(key(1), &small));
        let e = g.complete(answer("short"), origin());
        assert!(e.weight_bytes() <= 2_000);
        hit(cache.lookup_or_lead(key(1), &small));
        // Too large for the route's entry cap: served, not stored.
        let g = lead(cache.lookup_or_lead(key(2), &small));
        let e = g.complete(answer(&"x".repeat(5_000)), origin());
        assert!(e.weight_bytes() > 2_000);
        assert_eq!(e.response.text().len(), 5_000);
        lead(cache.lookup_or_lead(key(2), &small)).abandon();
        assert_eq!(
            rec.counter("switchyard_cache_not_stored_total{reason=too_large}"),
            1
        );
        // Weight tracks the serialized size.
        let big = answer(&"y".repeat(10_000));
        let json_len = serde_json::to_vec(&big).unwrap().len() as u64;
        let g = lead(cache.lookup_or_lead(key(3), &access()));
        let e = g.complete(big, origin());
        assert!(e.weight_bytes() >= json_len);
        assert!(e.weight_bytes() <= json_len + ENTRY_OVERHEAD_BYTES + 64);
    });
}

#[test]
fn entries_larger_than_the_whole_cache_are_not_stored() {
    let cache = ResponseCache::new(4_096);
    let g = lead(cache.lookup_or_lead(key(1), &access()));
    g.complete(answer(&"z".repeat(8_000)), origin());
    assert_eq!(cache.bytes(), 0);
    lead(cache.lookup_or_lead(key(1), &access())).abandon();
}

#[test]
fn eviction_keeps_the_byte_cap() {
    let rec = TestRecorder::default();
    metrics::with_local_recorder(&rec, || {
        let cap: u64 = 64 * 1024;
        let cache = ResponseCache::new(cap);
        let a = access();
        let mut weight = 0;
        for n in 0..200 {
            let g = lead(cache.lookup_or_lead(key(n), &a));
            let e = g.complete(answer(&format!("{n}:{}", "w".repeat(4_000))), origin());
            weight = e.weight_bytes();
            // The cap holds after every insert, not just eventually.
            assert!(cache.bytes() <= cap, "after {n}: {} > {cap}", cache.bytes());
        }
        cache.run_pending_tasks();
        let stored = cache.entry_count();
        assert!(stored >= 1, "the cache is not empty");
        assert!(
            stored * weight <= cap + stored * 8,
            "{stored} entries of ~{weight} bytes"
        );
        assert!(stored < 200);
        let held: u64 = (0..200)
            .filter_map(|n| cache.peek(&key(n), Duration::from_secs(60)))
            .map(|e| e.weight_bytes())
            .sum();
        assert_eq!(cache.bytes(), held, "byte counter matches the store");
        assert_eq!(rec.gauge(metric_names::BYTES), cache.bytes() as f64);
        let evicted = rec.counter("switchyard_cache_evictions_total{cause=size}");
        assert_eq!(evicted, 200 - stored, "every entry not kept was counted");
    });
}

#[test]
fn frequently_used_entries_survive_a_scan() {
    // TinyLFU: a hot entry is not flushed by a stream of one-off answers,
    // even when it is read less often than the cache turns over (an LRU
    // would drop it).
    let cap: u64 = 64 * 1024;
    let cache = ResponseCache::new(cap);
    let a = access();
    let body = |n: usize| answer(&format!("{n}:{}", "s".repeat(4_000)));
    for n in 1..20 {
        lead(cache.lookup_or_lead(key(n), &a)).complete(body(n), origin());
    }
    lead(cache.lookup_or_lead(key(0), &a)).complete(body(0), origin());
    for _ in 0..20 {
        hit(cache.lookup_or_lead(key(0), &a));
    }
    cache.run_pending_tasks();
    for n in 20..400 {
        let g = lead(cache.lookup_or_lead(key(n), &a));
        g.complete(body(n), origin());
        if n % 40 == 0 {
            hit(cache.lookup_or_lead(key(0), &a));
        }
    }
    cache.run_pending_tasks();
    hit(cache.lookup_or_lead(key(0), &a));
}

// --- coalescing ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn concurrent_identical_lookups_elect_one_leader() {
    let cache = ResponseCache::new(1 << 20);
    let req = request("popular question", Some(0.0));
    let rec = TestRecorder::default();
    let _g = metrics::set_default_local_recorder(&rec);
    let mut leaders = Vec::new();
    let mut followers = Vec::new();
    for _ in 0..32 {
        match begin(&cache, &req, Some("t"), "") {
            Lookup::Lead(g) => leaders.push(g),
            Lookup::Follow(w) => followers.push(w),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(leaders.len(), 1);
    assert_eq!(followers.len(), 31);
    let waits: Vec<_> = followers
        .into_iter()
        .map(|w| tokio::spawn(w.wait(Duration::from_secs(30))))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let leader = leaders.pop().unwrap();
    let entry = leader.complete(answer("shared"), origin());
    for w in waits {
        match w.await.unwrap() {
            FollowOutcome::Hit(e) => assert!(Arc::ptr_eq(&e, &entry)),
            FollowOutcome::Lead(_) => panic!("follower went upstream"),
        }
    }
    assert_eq!(rec.counter(metric_names::COALESCED), 31);
    assert_eq!(rec.counter(metric_names::MISSES), 32);
    assert_eq!(cache.in_flight(), 0);
    hit(begin(&cache, &req, Some("t"), ""));
}

/// Simulates the gateway: `n` concurrent tasks, each running the full
/// lookup → (lead → upstream → complete | follow → wait) flow.
async fn gateway_like(cache: ResponseCache, n: usize, fail_first: bool) -> (usize, Vec<String>) {
    let upstream_calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let cache = cache.clone();
        let calls = upstream_calls.clone();
        tasks.push(tokio::spawn(async move {
            let req = request("same", Some(0.0));
            let guard = match begin(&cache, &req, None, "") {
                Lookup::Hit(e) => return e.response.text(),
                Lookup::Lead(g) => g,
                Lookup::Follow(w) => match w.wait(Duration::from_secs(60)).await {
                    FollowOutcome::Hit(e) => return e.response.text(),
                    FollowOutcome::Lead(g) => g,
                },
                other => panic!("{other:?}"),
            };
            let call = calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            if fail_first && call == 0 {
                drop(guard);
                return "error".to_owned();
            }
            guard.complete(answer("ok"), origin()).response.text()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    (upstream_calls.load(Ordering::SeqCst), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_make_one_upstream_call() {
    let cache = ResponseCache::new(1 << 20);
    let (calls, answers) = gateway_like(cache.clone(), 50, false).await;
    assert_eq!(calls, 1);
    assert!(answers.iter().all(|a| a == "ok"));
    assert_eq!(cache.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_leader_hands_over_without_hanging() {
    let cache = ResponseCache::new(1 << 20);
    let started = std::time::Instant::now();
    let (calls, answers) = gateway_like(cache.clone(), 50, true).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "nobody waited for a timeout"
    );
    assert_eq!(answers.iter().filter(|a| *a == "error").count(), 1);
    assert_eq!(answers.iter().filter(|a| *a == "ok").count(), 49);
    // The failed leader + one successor; the other followers either waited
    // on the successor or (if they lost the takeover race) went upstream.
    assert!(calls >= 2, "{calls}");
    assert!(calls <= 50);
    assert_eq!(cache.in_flight(), 0);
    hit(begin(&cache, &request("same", Some(0.0)), None, ""));
}

#[tokio::test(start_paused = true)]
async fn leader_drop_wakes_followers_and_one_takes_over() {
    let cache = ResponseCache::new(1 << 20);
    let a = access();
    let leader = lead(cache.lookup_or_lead(key(7), &a));
    let waits: Vec<_> = (0..8)
        .map(|_| {
            let w = follow(cache.lookup_or_lead(key(7), &a));
            tokio::spawn(w.wait(Duration::from_secs(30)))
        })
        .collect();
    tokio::task::yield_now().await;
    let t0 = Instant::now();
    drop(leader);
    let mut registered = Vec::new();
    let mut detached = 0;
    for w in waits {
        match w.await.unwrap() {
            FollowOutcome::Lead(g) if g.is_coalescing() => registered.push(g),
            FollowOutcome::Lead(g) => {
                assert_eq!(g.status(), CacheStatus::Miss);
                detached += 1;
            }
            FollowOutcome::Hit(_) => panic!("nothing was answered"),
        }
    }
    // Woken at once (paused time would have jumped to the timeout otherwise).
    assert_eq!(Instant::now(), t0);
    assert_eq!(registered.len(), 1, "exactly one successor leads");
    assert_eq!(detached, 7);
    // Late arrivals follow the successor.
    let late = follow(cache.lookup_or_lead(key(7), &a));
    let late = tokio::spawn(late.wait(Duration::from_secs(30)));
    tokio::task::yield_now().await;
    registered
        .pop()
        .unwrap()
        .complete(answer("second try"), origin());
    match late.await.unwrap() {
        FollowOutcome::Hit(e) => assert_eq!(e.response.text(), "second try"),
        FollowOutcome::Lead(_) => panic!("late follower should be served"),
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_or_cancelled_leader_never_strands_followers() {
    let cache = ResponseCache::new(1 << 20);
    let a = access();
    // Panic while holding the guard.
    let leader = lead(cache.lookup_or_lead(key(1), &a));
    let w = follow(cache.lookup_or_lead(key(1), &a));
    let t = tokio::spawn(async move {
        let _guard = leader;
        tokio::time::sleep(Duration::from_millis(10)).await;
        panic!("upstream handler crashed");
    });
    let t0 = Instant::now();
    match w.wait(Duration::from_secs(30)).await {
        FollowOutcome::Lead(g) => assert!(g.is_coalescing()),
        FollowOutcome::Hit(_) => panic!(),
    }
    assert!(Instant::now() - t0 < Duration::from_secs(1));
    assert!(t.await.is_err());

    // The leader's task is cancelled (client went away) mid-call.
    let leader = lead(cache.lookup_or_lead(key(2), &a));
    let w = follow(cache.lookup_or_lead(key(2), &a));
    let t = tokio::spawn(async move {
        let _guard = leader;
        std::future::pending::<()>().await;
    });
    let waiter = tokio::spawn(w.wait(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t0 = Instant::now();
    t.abort();
    match waiter.await.unwrap() {
        FollowOutcome::Lead(g) => assert!(g.is_coalescing()),
        FollowOutcome::Hit(_) => panic!(),
    }
    assert!(Instant::now() - t0 < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn follower_wait_is_bounded() {
    let rec = TestRecorder::default();
    let _r = metrics::set_default_local_recorder(&rec);
    let cache = ResponseCache::new(1 << 20);
    let a = access();
    let stuck_leader = lead(cache.lookup_or_lead(key(1), &a));
    let w = follow(cache.lookup_or_lead(key(1), &a));
    let t0 = Instant::now();
    let g = match w.wait(Duration::from_secs(5)).await {
        FollowOutcome::Lead(g) => g,
        FollowOutcome::Hit(_) => panic!(),
    };
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    assert!(!g.is_coalescing(), "gave up: goes upstream on its own");
    assert_eq!(g.status(), CacheStatus::Miss);
    assert_eq!(
        rec.counter("switchyard_cache_bypass_total{reason=coalesce_timeout}"),
        1
    );
    // Its answer is still stored.
    g.complete(answer("late"), origin());
    hit(cache.lookup_or_lead(key(1), &a));
    // The stuck leader finishing later is harmless.
    stuck_leader.complete(answer("later"), origin());
    assert_eq!(
        hit(cache.lookup_or_lead(key(1), &a)).response.text(),
        "later"
    );
}

#[tokio::test(start_paused = true)]
async fn followers_are_served_even_if_the_answer_is_too_large_to_store() {
    let cache = ResponseCache::new(1 << 20);
    let a = Access {
        max_entry_bytes: 1_000,
        ..access()
    };
    let g = lead(cache.lookup_or_lead(key(1), &a));
    let w = tokio::spawn(follow(cache.lookup_or_lead(key(1), &a)).wait(Duration::from_secs(5)));
    tokio::task::yield_now().await;
    g.complete(answer(&"b".repeat(5_000)), origin());
    match w.await.unwrap() {
        FollowOutcome::Hit(e) => assert_eq!(e.response.text().len(), 5_000),
        FollowOutcome::Lead(_) => panic!(),
    }
    assert_eq!(cache.entry_count(), 0);
}

#[test]
fn streamed_miss_is_stored_and_replayed() {
    use crate::formats::{StreamDecoder, StreamEncoder};
    let cache = ResponseCache::new(1 << 20);
    let req = request("stream me", Some(0.0));
    let g = lead(begin(&cache, &req, None, ""));
    // The leader relays a provider stream and feeds the assembler.
    let provider_sse = concat!(
        "data: {\"id\":\"c9\",\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi \"}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"there\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"gpt\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );
    let mut dec = StreamDecoder::new(ApiFormat::OpenAi);
    let mut asm = g.stream_assembler(ApiFormat::OpenAi);
    asm.push_all(&dec.feed(provider_sse.as_bytes()).unwrap());
    assert!(dec.is_complete());
    asm.set_usage(dec.usage());
    let resp = asm.finish().unwrap();
    g.complete(resp, origin());
    // An Anthropic streaming client asking the same question gets a replay.
    let e = hit(begin(&cache, &req, None, ""));
    let mut enc = StreamEncoder::new(ApiFormat::Anthropic, "chat", false);
    let mut buf = bytes::BytesMut::new();
    for ev in e.replay_events() {
        enc.encode(&ev, &mut buf);
    }
    enc.finish(&mut buf);
    let mut back = StreamDecoder::new(ApiFormat::Anthropic);
    let mut asm = StreamAssembler::new(ApiFormat::Anthropic, u64::MAX);
    asm.push_all(&back.feed(&buf).unwrap());
    assert!(back.is_complete());
    let r = asm.finish().unwrap();
    assert_eq!(r.text(), "Hi there");
    assert_eq!(r.usage.input_tokens, 3);
    assert_eq!(r.usage.output_tokens, 2);
}

#[test]
fn insert_and_peek() {
    let cache = ResponseCache::default();
    assert_eq!(cache.max_bytes(), DEFAULT_MAX_BYTES);
    assert!(cache.insert(key(1), answer("warm"), origin(), &access()));
    assert_eq!(
        cache
            .peek(&key(1), Duration::from_secs(60))
            .unwrap()
            .response
            .text(),
        "warm"
    );
    assert!(cache.peek(&key(2), Duration::from_secs(60)).is_none());
    cache.clear();
    assert!(cache.peek(&key(1), Duration::from_secs(60)).is_none());
    assert_eq!(cache.bytes(), 0);
    assert!(format!("{cache:?}").contains("max_bytes"));
}
