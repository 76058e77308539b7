//! Tests of the whole tree on the fake engine: dispatch, caching, routing, idleness,
//! supervision and fairness between tenants, without llama.cpp. Each test builds its own
//! isolated tree and shuts it down, failing if actors are left running.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genrt_functions::{FunctionName, GenerationParams, TenantId};
use serde_json::json;

use crate::engine::fake::FakeBackend;
use crate::{
    ActorTree, CacheKey, CachedCompletion, DeployedFunction, Invocation, InvocationId, InvokeError,
    ModelConfig, ModelPhase, ResponseCache, RestartPolicy, TreeConfig,
};

#[derive(Default)]
struct MapCache(Mutex<HashMap<CacheKey, CachedCompletion>>);

impl ResponseCache for MapCache {
    fn get(&self, key: &CacheKey) -> Option<CachedCompletion> {
        self.0.lock().unwrap().get(key).cloned()
    }
    fn insert(&self, key: CacheKey, value: CachedCompletion, _ttl: Option<Duration>) {
        self.0.lock().unwrap().insert(key, value);
    }
}

struct Harness {
    /// Shared so that tests can invoke from spawned tasks, many at once.
    tree: Arc<ActorTree>,
    backend: Arc<FakeBackend>,
}

impl Harness {
    async fn start(models: Vec<ModelConfig>) -> Self {
        Self::start_on(models, FakeBackend::default()).await
    }

    async fn start_on(models: Vec<ModelConfig>, backend: FakeBackend) -> Self {
        let backend = Arc::new(backend);
        let config = TreeConfig {
            models,
            restart_policy: RestartPolicy {
                base_backoff: Duration::from_millis(1),
                ..RestartPolicy::default()
            },
            memory_budget_bytes: u64::MAX / 2,
            gpu_memory_margin_bytes: 64 << 20,
        };
        let tree = ActorTree::start(config, backend.clone(), Arc::new(MapCache::default()))
            .await
            .unwrap();
        Self {
            tree: Arc::new(tree),
            backend,
        }
    }

    async fn stop(self) {
        self.tree.shutdown().await;
        assert!(!self.tree.is_running(), "tree still running after shutdown");
        assert_eq!(
            self.backend.live_weights.load(Ordering::SeqCst),
            0,
            "weights still loaded after shutdown"
        );
    }
}

fn model(id: &str, idle_s: u64) -> ModelConfig {
    let mut m = ModelConfig::new(id, format!("/models/{id}.gguf"));
    m.idle_timeout_s = idle_s;
    m
}

fn function(spec: serde_json::Value) -> Arc<DeployedFunction> {
    function_of("acme", spec)
}

fn function_of(tenant: &str, spec: serde_json::Value) -> Arc<DeployedFunction> {
    Arc::new(DeployedFunction {
        tenant: TenantId::parse(tenant).unwrap(),
        name: FunctionName::parse("f").unwrap(),
        version: 1,
        spec: serde_json::from_value(spec).unwrap(),
        digest: String::new(),
    })
}

fn invocation(f: &Arc<DeployedFunction>, input: serde_json::Value) -> Invocation {
    Invocation {
        id: InvocationId::new(),
        function: Arc::clone(f),
        input,
        params: GenerationParams {
            temperature: Some(0.0),
            ..Default::default()
        },
        received_at: Instant::now(),
        priority: crate::Priority::Interactive,
        stream: None,
        fault: None,
        conversation: None,
        prompt: None,
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn invokes_then_serves_the_repeat_from_cache() {
    let h = Harness::start(vec![model("m", 60)]).await;
    let f = function(json!({"model": "m", "prompt": "Hello {{ who }}"}));
    let first = h
        .tree
        .invoke(invocation(&f, json!({"who": "world"})))
        .await
        .unwrap();
    assert_eq!(first.text, "echo: Hello world");
    assert!(!first.cache_hit);
    let second = h
        .tree
        .invoke(invocation(&f, json!({"who": "world"})))
        .await
        .unwrap();
    assert!(second.cache_hit);
    assert_eq!(second.text, first.text);
    assert_eq!(h.backend.loads.load(Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test]
async fn routes_by_input_field() {
    let h = Harness::start(vec![model("general", 60), model("fashion", 60)]).await;
    let f = function(json!({
        "route": {"field": "category", "cases": {"fashion": "fashion"}, "default": "general"},
        "prompt": "{{ item }}"
    }));
    let a = h
        .tree
        .invoke(invocation(&f, json!({"category": "fashion", "item": "a"})))
        .await
        .unwrap();
    let b = h
        .tree
        .invoke(invocation(&f, json!({"category": "garden", "item": "b"})))
        .await
        .unwrap();
    assert_eq!(a.model.as_str(), "fashion");
    assert_eq!(b.model.as_str(), "general");
    h.stop().await;
}

#[tokio::test]
async fn input_errors_never_reach_a_model() {
    let h = Harness::start(vec![model("m", 60)]).await;
    let f = function(json!({"model": "m", "prompt": "Hello {{ who }}"}));
    let err = h.tree.invoke(invocation(&f, json!({}))).await.unwrap_err();
    assert!(matches!(err, InvokeError::Input(_)), "{err:?}");
    assert_eq!(h.backend.loads.load(Ordering::SeqCst), 0);
    h.stop().await;
}

#[tokio::test]
async fn idle_function_actors_stop_and_idle_models_unload() {
    let h = Harness::start(vec![model("m", 1)]).await;
    let f =
        function(json!({"model": "m", "prompt": "x {{ n | default(1) }}", "idle_timeout_s": 1}));
    h.tree.invoke(invocation(&f, json!({}))).await.unwrap();
    let (tenant, name) = (f.tenant.clone(), f.name.clone());
    assert_eq!(h.tree.active_versions(&tenant, &name).await, vec![1]);
    assert_eq!(h.tree.models().await[0].phase, ModelPhase::Ready);
    wait_until("function actor to stop", || async {
        h.tree.active_versions(&tenant, &name).await.is_empty()
    })
    .await;
    wait_until("model to unload", || async {
        let s = &h.tree.models().await[0];
        s.phase == ModelPhase::Unloaded && s.replicas == 0
    })
    .await;
    assert_eq!(
        h.backend.live_weights.load(Ordering::SeqCst),
        0,
        "weights freed"
    );
    // Scale from zero: the next call loads again.
    let again = h
        .tree
        .invoke(invocation(&f, json!({"n": 2})))
        .await
        .unwrap();
    assert!(!again.cache_hit);
    assert_eq!(h.backend.loads.load(Ordering::SeqCst), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_panicking_engine_fails_its_call_and_the_replica_is_restarted() {
    let h = Harness::start(vec![model("m", 60)]).await;
    let f = function(json!({"model": "m", "prompt": "{{ text }}"}));
    let err = h
        .tree
        .invoke(invocation(&f, json!({"text": "PANIC now"})))
        .await
        .unwrap_err();
    assert!(matches!(err, InvokeError::ReplicaFailed { .. }), "{err:?}");
    assert!(err.is_retryable());
    let ok = h
        .tree
        .invoke(invocation(&f, json!({"text": "fine"})))
        .await
        .unwrap();
    assert_eq!(ok.text, "echo: fine");
    wait_until("restart to be counted", || async {
        h.tree.models().await[0].replica_restarts == 1
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_model_that_cannot_load_is_reported_and_others_still_serve() {
    let h = Harness::start(vec![model("missing", 60), model("ok", 60)]).await;
    let bad = function(json!({"model": "missing", "prompt": "x"}));
    let err = h
        .tree
        .invoke(invocation(&bad, json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, InvokeError::ModelUnavailable { .. }),
        "{err:?}"
    );
    let statuses = h.tree.models().await;
    assert!(matches!(statuses[0].phase, ModelPhase::Failed { .. }));
    let good = function(json!({"model": "ok", "prompt": "x"}));
    assert!(h.tree.invoke(invocation(&good, json!({}))).await.is_ok());
    h.stop().await;
}

#[tokio::test]
async fn a_tenant_is_served_before_another_tenants_backlog() {
    const FLOOD: u32 = 20;
    let mut m = model("m", 60);
    // One slot: jobs run one at a time, in the order the pool hands them out.
    m.slots = 1;
    let h = Harness::start(vec![m]).await;
    h.backend.load_gate.close();
    let flood = function_of("flood", json!({"model": "m", "prompt": "flood {{ n }}"}));
    let quiet = function_of("quiet", json!({"model": "m", "prompt": "quiet"}));
    let queued = |n: u32| {
        let tree = Arc::clone(&h.tree);
        move || {
            let tree = Arc::clone(&tree);
            async move { tree.models().await[0].queued == n }
        }
    };

    let mut flooding = tokio::task::JoinSet::new();
    for n in 0..FLOOD {
        let (tree, inv) = (Arc::clone(&h.tree), invocation(&flood, json!({ "n": n })));
        flooding.spawn(async move { tree.invoke(inv).await });
    }
    wait_until("the flood to be queued", queued(FLOOD)).await;
    let tree = Arc::clone(&h.tree);
    let inv = invocation(&quiet, json!({}));
    let single = tokio::spawn(async move { tree.invoke(inv).await });
    wait_until("the single invocation to be queued", queued(FLOOD + 1)).await;
    h.backend.load_gate.open();

    assert_eq!(single.await.unwrap().unwrap().text, "echo: quiet");
    while let Some(done) = flooding.join_next().await {
        done.unwrap().unwrap();
    }
    let started = h.backend.started.lock().unwrap().clone();
    assert_eq!(started.len(), FLOOD as usize + 1);
    let at = started.iter().position(|p| p == "quiet").unwrap();
    // In arrival order it would have been last; in turns it waits for one flood job at most.
    assert!(
        at <= 1,
        "the single invocation started at {at}: {started:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn work_whose_caller_left_is_dropped_not_finished() {
    let h = Harness::start(vec![model("m", 60)]).await;
    h.backend.load_gate.close();
    let f = function(json!({"model": "m", "prompt": "Hello {{ who }}"}));
    let tree = Arc::clone(&h.tree);
    let inv = invocation(&f, json!({"who": "nobody"}));
    let caller = tokio::spawn(async move { tree.invoke(inv).await });
    let tree = Arc::clone(&h.tree);
    wait_until("the invocation to be queued", || {
        let tree = Arc::clone(&tree);
        async move { tree.models().await[0].queued == 1 }
    })
    .await;
    // The caller goes away (a cancelled asynchronous invocation); the function actor notices
    // within its check interval and withdraws the job.
    caller.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.backend.load_gate.open();
    wait_until("the job to leave the engine", || {
        let tree = Arc::clone(&tree);
        async move {
            let m = &tree.models().await[0];
            m.loads == 1 && m.queued == 0 && m.busy_slots == 0
        }
    })
    .await;
    // Had it been generated anyway, its result would now be in the cache.
    let again = h
        .tree
        .invoke(invocation(&f, json!({"who": "nobody"})))
        .await
        .unwrap();
    assert!(!again.cache_hit, "the abandoned job ran to its end");
    assert_eq!(again.text, "echo: Hello nobody");
    h.stop().await;
}

/// A model file of `bytes` (sparse: nothing is written), for the memory budget to size.
fn sized_model(id: &str, dir: &std::path::Path, bytes: u64) -> ModelConfig {
    let path = dir.join(format!("{id}.gguf"));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    let mut m = ModelConfig::new(id, path);
    m.idle_timeout_s = 60;
    m
}

fn fake_gpu_backend(free: u64) -> FakeBackend {
    let backend = FakeBackend {
        gpus: 1,
        ..FakeBackend::default()
    };
    backend.gpu_free.store(free, Ordering::SeqCst);
    backend
}

#[tokio::test]
async fn layers_go_to_the_gpu_by_default_and_its_free_memory_is_checked_first() {
    const GIB: u64 = 1 << 30;
    let dir = std::env::temp_dir().join(format!("genrt-gpu-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let on_gpu = sized_model("big", &dir, 2 * GIB);
    let mut on_cpu = sized_model("pinned", &dir, 2 * GIB);
    on_cpu.n_gpu_layers = Some(0);
    // 1 GiB free on the card: the 2 GiB model cannot go there; the pinned one never asks.
    let h = Harness::start_on(vec![on_gpu, on_cpu], fake_gpu_backend(GIB)).await;
    let big = function(json!({"model": "big", "prompt": "{{ x }}"}));
    let err = h
        .tree
        .invoke(invocation(&big, json!({"x": "a"})))
        .await
        .unwrap_err();
    let InvokeError::InsufficientMemory(reason) = &err else {
        panic!("expected insufficient memory, got {err:?}");
    };
    assert!(
        reason.contains("needs 2048 MiB on FAKE0 (fake GPU) but the device has 1024 MiB free"),
        "{reason}"
    );
    assert!(
        h.backend.placements.lock().unwrap().is_empty(),
        "nothing may load"
    );
    let pinned = function(json!({"model": "pinned", "prompt": "{{ x }}"}));
    let ok = h
        .tree
        .invoke(invocation(&pinned, json!({"x": "b"})))
        .await
        .unwrap();
    assert_eq!(ok.text, "echo: b");
    let status = h.tree.models().await;
    let pinned_status = status.iter().find(|m| m.id.as_str() == "pinned").unwrap();
    assert_eq!(pinned_status.device, "CPU");
    assert_eq!(pinned_status.gpu_layers, Some(0));
    assert_eq!(pinned_status.gpu_memory_bytes, 0);
    assert!(pinned_status.memory_bytes >= 2 * GIB);
    h.stop().await;

    // With room on the card, every layer and the KV cache go there; the host holds nothing.
    let h = Harness::start_on(
        vec![sized_model("big", &dir, 2 * GIB)],
        fake_gpu_backend(8 * GIB),
    )
    .await;
    let ok = h
        .tree
        .invoke(invocation(&big, json!({"x": "c"})))
        .await
        .unwrap();
    assert_eq!(ok.text, "echo: c");
    let placement = h.backend.placements.lock().unwrap()[0].clone();
    assert_eq!(placement.n_gpu_layers, u32::MAX);
    assert_eq!(placement.gpu.as_ref().unwrap().ordinal, 0);
    let status = h.tree.models().await.remove(0);
    assert_eq!(status.device, "FAKE0 (fake GPU)");
    assert_eq!(
        status.gpu_layers,
        Some(crate::engine::fake::FAKE_LAYERS + 1)
    );
    assert_eq!(status.memory_bytes, 0);
    assert!(
        status.gpu_memory_bytes > 2 * GIB,
        "{}",
        status.gpu_memory_bytes
    );
    h.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_main_gpu_that_is_not_there_stops_the_start() {
    let mut m = model("m", 60);
    m.main_gpu = 1;
    let backend = Arc::new(fake_gpu_backend(1 << 30));
    let config = TreeConfig {
        models: vec![m],
        restart_policy: RestartPolicy::default(),
        memory_budget_bytes: u64::MAX / 2,
        gpu_memory_margin_bytes: 0,
    };
    let err = ActorTree::start(config, backend, Arc::new(MapCache::default()))
        .await
        .err()
        .expect("start must fail");
    assert!(
        err.to_string()
            .contains("main_gpu is 1 but only 1 GPU is present (FAKE0)"),
        "{err}"
    );
}
