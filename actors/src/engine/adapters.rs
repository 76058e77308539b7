//! LoRA adapters on a shared base model.
//!
//! An invocation names the adapters it runs with (an [`AdapterSet`]: each adapter's file and
//! scale). A model's [`AdapterCache`] loads an adapter the first time one of its replicas
//! admits a sequence that uses it, shares it between the replicas (the tensors are read-only
//! once loaded), holds its memory against the budget (host, or the GPU its base layers are on,
//! split as the weights are), and unloads it once no sequence has used it for the model's
//! `idle_timeout_s`; all of them go with the weights when the model scales to zero.
//!
//! llama.cpp applies adapters per context, not per sequence: one decode step runs one set.
//! The scheduler therefore groups sequences by set and rotates between sets (see
//! `scheduler.rs`); the set is part of the prefix cache's key, since KV computed with one set
//! is not the KV of another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{EngineError, Weights};
use crate::memory::{Budgets, Held};

/// One adapter as an invocation uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// The adapter's registered name, for messages and the invocation record.
    pub name: String,
    pub path: PathBuf,
    /// The file's SHA-256: what identifies the adapter to the cache and to the prefix cache,
    /// so that an adapter registered again under the same name with another file is another
    /// adapter.
    pub sha256: String,
    pub scale: f32,
}

/// The adapters one sequence runs with, in a canonical order (by file), without those of
/// scale 0, which change nothing: two invocations asking for the same adapters in another
/// order, or the base with an adapter at scale 0, share decode steps and cached prefixes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterSet(Vec<AdapterSpec>);

impl AdapterSet {
    /// One file named twice (`model: base:x` with `adapters: [{id: x}]`, or two names of one
    /// file) is one adapter at the sum of its scales: llama.cpp keeps one scale per adapter.
    pub fn new(specs: impl IntoIterator<Item = AdapterSpec>) -> Self {
        let mut merged: Vec<AdapterSpec> = Vec::new();
        for spec in specs {
            match merged.iter_mut().find(|m| m.sha256 == spec.sha256) {
                Some(m) => m.scale += spec.scale,
                None => merged.push(spec),
            }
        }
        merged.retain(|s| s.scale != 0.0);
        merged.sort_by(|a, b| a.sha256.cmp(&b.sha256).then(a.name.cmp(&b.name)));
        Self(merged)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn specs(&self) -> &[AdapterSpec] {
        &self.0
    }

    pub fn key(&self) -> AdapterKey {
        AdapterKey(
            self.0
                .iter()
                .map(|s| (s.sha256.clone(), s.scale.to_bits()))
                .collect(),
        )
    }

    /// How the set reads in an invocation's record: `fashion`, `fashion*0.5+tone`.
    pub fn label(&self) -> String {
        let mut names: Vec<String> = self
            .0
            .iter()
            .map(|s| match s.scale {
                1.0 => s.name.clone(),
                scale => format!("{}*{scale}", s.name),
            })
            .collect();
        names.sort();
        names.join("+")
    }
}

/// What makes two sets the same for batching and for the prefix cache: files and scales.
/// The empty key is the base model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterKey(Vec<(String, u32)>);

impl AdapterKey {
    pub fn is_base(&self) -> bool {
        self.0.is_empty()
    }
}

/// An adapter loaded into an engine: freed when the last holder drops it.
pub trait LoadedAdapter: Send + Sync + 'static {
    /// For the engine that loaded it, to reach its own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A set's adapters as loaded, with their scales: what a session applies.
#[derive(Clone)]
pub struct ActiveSet {
    pub key: AdapterKey,
    pub adapters: Vec<(Arc<dyn LoadedAdapter>, f32)>,
}

impl ActiveSet {
    pub fn base() -> Self {
        Self {
            key: AdapterKey::default(),
            adapters: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ActiveSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveSet").field("key", &self.key).finish()
    }
}

struct Entry {
    adapter: Arc<dyn LoadedAdapter>,
    bytes: u64,
    /// Released after the adapter: memory is not given back before the tensors are freed.
    _memory: Held,
    last_used: Instant,
}

/// An adapter in the cache: loaded, or being loaded by one engine thread while others that
/// need it wait for the outcome.
enum Slot {
    Ready(Entry),
    Loading(Arc<Loading>),
}

/// One load in progress, which the threads that need the same adapter wait for.
#[derive(Default)]
struct Loading {
    finished: Mutex<bool>,
    done: Condvar,
}

impl Loading {
    fn finish(&self) {
        *self.finished.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.done.notify_all();
    }

    fn wait(&self) {
        let finished = self.finished.lock().expect("adapter load lock");
        let _finished = self
            .done
            .wait_while(finished, |finished| !*finished)
            .expect("adapter load lock");
    }
}

/// Ends a load whatever happens to the loading thread: a load that fails or panics removes
/// its slot and wakes its waiters instead of leaving them blocked.
struct LoadGuard<'a> {
    cache: &'a AdapterCache,
    sha256: &'a str,
    loading: Arc<Loading>,
    entry: Option<Entry>,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        // Also while unwinding from a panicking load: a poisoned lock is still the map.
        let mut slots = self
            .cache
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.entry.take() {
            Some(entry) => slots.insert(self.sha256.to_owned(), Slot::Ready(entry)),
            None => slots.remove(self.sha256),
        };
        drop(slots);
        self.loading.finish();
    }
}

/// The adapters loaded for one model's weights, shared by its replicas.
pub struct AdapterCache {
    /// Declared before `weights`: adapters are freed before the weights they were loaded
    /// for (llama.cpp frees an adapter with its model otherwise, and then again here).
    slots: Mutex<HashMap<String, Slot>>,
    weights: Arc<dyn Weights>,
    budgets: Budgets,
    /// The GPU the base's layers are on, and their share there.
    gpu: Option<(usize, f64)>,
    idle: Duration,
    model: String,
}

impl AdapterCache {
    pub fn new(
        weights: Arc<dyn Weights>,
        budgets: Budgets,
        gpu: Option<(usize, f64)>,
        idle: Duration,
        model: String,
    ) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            weights,
            budgets,
            gpu,
            idle,
            model,
        }
    }

    /// The adapters of `set`, loading those not loaded yet. Called on an engine thread when a
    /// sequence is admitted. A load runs outside the cache's lock, so that other replicas
    /// meanwhile take the adapters already loaded; one that needs the adapter being loaded
    /// waits for that load rather than starting another. (llama.cpp's own adapter list is
    /// guarded by the engine, per model: see `llama.rs`.)
    pub fn acquire(&self, set: &AdapterSet) -> Result<ActiveSet, EngineError> {
        self.sweep();
        let mut adapters = Vec::with_capacity(set.specs().len());
        for spec in set.specs() {
            adapters.push((self.adapter(spec)?, spec.scale));
        }
        Ok(ActiveSet {
            key: set.key(),
            adapters,
        })
    }

    fn adapter(&self, spec: &AdapterSpec) -> Result<Arc<dyn LoadedAdapter>, EngineError> {
        loop {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let loading = match slots.get_mut(&spec.sha256) {
                Some(Slot::Ready(entry)) => {
                    entry.last_used = now;
                    return Ok(Arc::clone(&entry.adapter));
                }
                Some(Slot::Loading(loading)) => Arc::clone(loading),
                None => {
                    let loading = Arc::new(Loading::default());
                    let slot = Slot::Loading(Arc::clone(&loading));
                    slots.insert(spec.sha256.clone(), slot);
                    drop(slots);
                    let mut guard = LoadGuard {
                        cache: self,
                        sha256: &spec.sha256,
                        loading,
                        entry: None,
                    };
                    let entry = self.load(spec)?;
                    let adapter = Arc::clone(&entry.adapter);
                    guard.entry = Some(entry);
                    return Ok(adapter);
                }
            };
            drop(slots);
            // Then it is loaded, or its load failed and this thread tries in turn (and
            // reports its own error).
            loading.wait();
        }
    }

    /// Reserves the adapter's memory and loads it, outside the cache's lock.
    fn load(&self, spec: &AdapterSpec) -> Result<Entry, EngineError> {
        let bytes = std::fs::metadata(&spec.path)
            .map_err(|e| {
                EngineError::Load(format!(
                    "adapter `{}` ({}): {e}",
                    spec.name,
                    spec.path.display()
                ))
            })?
            .len();
        let (host, gpu) = match self.gpu {
            Some((ordinal, share)) => {
                let on_gpu = (bytes as f64 * share) as u64;
                (bytes - on_gpu, Some((ordinal, on_gpu)))
            }
            None => (bytes, None),
        };
        let what = format!("adapter `{}` of `{}`", spec.name, self.model);
        let memory = self
            .budgets
            .reserve(host, gpu, &what)
            .map_err(EngineError::MemoryBudget)?;
        let adapter = Arc::clone(&self.weights)
            .load_adapter(&spec.path)
            .map_err(|e| EngineError::Load(format!("adapter `{}`: {e}", spec.name)))?;
        tracing::info!(model = %self.model, adapter = %spec.name, bytes, "adapter loaded");
        Ok(Entry {
            adapter,
            bytes,
            _memory: memory,
            last_used: Instant::now(),
        })
    }

    /// Marks a finished sequence's adapters as used now, so that idleness counts from its end.
    pub fn release(&self, set: ActiveSet) {
        if set.adapters.is_empty() {
            return;
        }
        let mut slots = self.slots.lock().expect("adapter cache lock");
        let now = Instant::now();
        for (sha, _) in &set.key.0 {
            if let Some(Slot::Ready(entry)) = slots.get_mut(sha) {
                entry.last_used = now;
            }
        }
        drop(slots);
        // If the cache let go of an adapter meanwhile, this is its last holder: the engine's
        // free takes the model's adapter lock itself.
        drop(set);
    }

    /// Unloads the adapters no sequence holds and none has used for the idle timeout. They are
    /// freed after the cache's lock is released: a free takes the model's adapter lock, which
    /// a load on another replica may hold for a while.
    pub fn sweep(&self) {
        let now = Instant::now();
        let idle: Vec<Slot> = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let keys: Vec<String> = slots
                .iter()
                .filter(|(_, slot)| match slot {
                    // Only this cache holds it: no sequence runs with it and no context
                    // applies it.
                    Slot::Ready(e) => {
                        Arc::strong_count(&e.adapter) == 1
                            && now.duration_since(e.last_used) >= self.idle
                    }
                    Slot::Loading(_) => false,
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.iter().filter_map(|key| slots.remove(key)).collect()
        };
        for slot in &idle {
            if let Slot::Ready(e) = slot {
                tracing::info!(model = %self.model, bytes = e.bytes, "idle adapter unloaded");
            }
        }
        drop(idle);
    }

    /// Adapters loaded now, and their bytes.
    pub fn status(&self) -> (u32, u64) {
        let slots = self.slots.lock().expect("adapter cache lock");
        slots.values().fold((0, 0), |(n, bytes), slot| match slot {
            Slot::Ready(e) => (n + 1, bytes + e.bytes),
            Slot::Loading(_) => (n, bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;

    use super::*;
    use crate::engine::Session;
    use crate::memory::MemoryBudget;
    use crate::ModelConfig;

    /// Weights whose adapter loads count themselves, and block while `slow` is in the file's
    /// name until the gate opens.
    #[derive(Default)]
    struct GatedWeights {
        loads: AtomicU32,
        open: Mutex<bool>,
        opened: Condvar,
    }

    struct TestAdapter;

    impl LoadedAdapter for TestAdapter {
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    impl Weights for GatedWeights {
        fn kv_bytes(&self, _: &ModelConfig) -> u64 {
            0
        }

        fn run_session(
            &self,
            _: &ModelConfig,
            _: &mut dyn FnMut(&mut dyn Session),
        ) -> Result<(), EngineError> {
            unreachable!("no sessions in these tests")
        }

        fn load_adapter(
            self: Arc<Self>,
            path: &std::path::Path,
        ) -> Result<Arc<dyn LoadedAdapter>, String> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            if path.to_string_lossy().contains("slow") {
                let open = self.open.lock().unwrap();
                let _open = self.opened.wait_while(open, |open| !*open).unwrap();
            }
            Ok(Arc::new(TestAdapter))
        }
    }

    #[test]
    fn a_slow_load_holds_up_only_those_that_need_that_adapter_and_runs_once() {
        let dir = std::env::temp_dir().join(format!("genrt-adapter-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str| {
            let path = dir.join(format!("{name}.gguf"));
            std::fs::write(&path, [0u8; 1000]).unwrap();
            AdapterSpec {
                name: name.into(),
                path,
                sha256: name.into(),
                scale: 1.0,
            }
        };
        let (fast, slow) = (file("fast"), file("slow"));
        let weights = Arc::new(GatedWeights::default());
        let budgets = Budgets::host_only(MemoryBudget::new(1 << 30));
        let cache = Arc::new(AdapterCache::new(
            weights.clone(),
            budgets,
            None,
            Duration::from_secs(60),
            "m".into(),
        ));
        let acquire = |spec: &AdapterSpec| {
            let (cache, set) = (Arc::clone(&cache), AdapterSet::new([spec.clone()]));
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(cache.acquire(&set).map(|s| s.key));
            });
            rx
        };
        let wait = Duration::from_secs(10);
        assert!(acquire(&fast).recv_timeout(wait).unwrap().is_ok());
        let first = acquire(&slow);
        while weights.loads.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // While `slow` loads, a loaded adapter is served at once...
        assert!(acquire(&fast).recv_timeout(wait).unwrap().is_ok());
        // ...and a second sequence wanting `slow` waits for that load instead of loading it
        // again.
        let second = acquire(&slow);
        assert!(second.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(
            cache.status(),
            (1, 1000),
            "a load in progress is not counted"
        );
        *weights.open.lock().unwrap() = true;
        weights.opened.notify_all();
        assert!(first.recv_timeout(wait).unwrap().is_ok());
        assert!(second.recv_timeout(wait).unwrap().is_ok());
        assert_eq!(weights.loads.load(Ordering::SeqCst), 2);
        assert_eq!(cache.status(), (2, 2000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn spec(name: &str, sha: &str, scale: f32) -> AdapterSpec {
        AdapterSpec {
            name: name.into(),
            path: PathBuf::from(format!("/adapters/{name}.gguf")),
            sha256: sha.into(),
            scale,
        }
    }

    #[test]
    fn a_set_is_the_same_in_any_order_and_without_its_zero_scales() {
        let a = AdapterSet::new([spec("tone", "bb", 0.5), spec("fashion", "aa", 1.0)]);
        let b = AdapterSet::new([
            spec("fashion", "aa", 1.0),
            spec("sports", "cc", 0.0),
            spec("tone", "bb", 0.5),
        ]);
        assert_eq!(a.key(), b.key());
        assert_eq!(a.label(), "fashion+tone*0.5");
        assert!(AdapterSet::new([spec("x", "dd", 0.0)]).key().is_base());
        // One file twice is one adapter at the summed scale.
        let twice = AdapterSet::new([spec("fashion", "aa", 1.0), spec("alias", "aa", 0.5)]);
        assert_eq!(
            twice.key(),
            AdapterSet::new([spec("fashion", "aa", 1.5)]).key()
        );
        assert!(
            AdapterSet::new([spec("a", "aa", 1.0), spec("b", "aa", -1.0)])
                .key()
                .is_base()
        );
        assert_ne!(
            AdapterSet::new([spec("fashion", "aa", 0.5)]).key(),
            AdapterSet::new([spec("fashion", "aa", 1.0)]).key(),
            "the scale is part of the key"
        );
    }
}
