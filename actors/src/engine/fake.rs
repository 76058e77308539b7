//! A deterministic engine for fast unit tests of scheduling and supervision; the real engine
//! is exercised by the end-to-end tests. Tokens are bytes; a sequence generates
//! `echo: <user text>` one byte per step and then ends. A user text containing `PANIC` makes
//! sampling panic. A fake adapter is named by its file's stem; a sequence whose every token
//! was computed under adapters `a` (at scale 1) and `b` (at 0.5) echoes `echo[a+b*0.5]: `, and
//! one whose tokens were computed under different sets echoes `MIXED: `, so that a scheduler
//! that mixes adapter sets in one sequence is caught by its output, as it would be on a real
//! model. Tests can hold loads back ([`LoadGate`]) to queue work before any runs, and
//! read the order in which engines started prompts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use genrt_functions::{OutputSpec, RenderedPrompt, SamplingParams};

use super::devices::{Device, DeviceKind, Placement};
use super::{
    ActiveSet, Backend, BatchItem, EngineError, LoadedAdapter, Sampled, SeqId, Session, TokenId,
    Weights,
};
use crate::ModelConfig;

/// Separates system from user bytes in a fake prompt.
const SEPARATOR: i32 = 0;
const END: i32 = -1;

#[derive(Default)]
pub struct FakeBackend {
    pub loads: AtomicU32,
    pub live_weights: Arc<AtomicU32>,
    pub load_gate: LoadGate,
    /// The user text of every prompt an engine of this backend started, in order.
    pub started: Arc<Mutex<Vec<String>>>,
    /// GPUs this backend pretends to have, all with `gpu_free` bytes free.
    pub gpus: u32,
    pub gpu_free: AtomicU64,
    /// The placement of every load, in order.
    pub placements: Mutex<Vec<Placement>>,
}

/// Every fake model has this many repeating layers.
pub(crate) const FAKE_LAYERS: u32 = 29;

impl Backend for FakeBackend {
    fn load(
        &self,
        model: &ModelConfig,
        placement: &Placement,
    ) -> Result<Arc<dyn Weights>, EngineError> {
        if model.path.to_string_lossy().contains("missing") {
            return Err(EngineError::Load("no such file".into()));
        }
        self.placements.lock().unwrap().push(placement.clone());
        self.load_gate.pass();
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.live_weights.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(FakeWeights {
            live: Arc::clone(&self.live_weights),
            started: Arc::clone(&self.started),
        }))
    }

    fn devices(&self) -> Vec<Device> {
        let free = self.gpu_free.load(Ordering::SeqCst);
        let mut devices: Vec<Device> = (0..self.gpus as usize)
            .map(|i| Device {
                index: i,
                name: format!("FAKE{i}"),
                description: "fake GPU".into(),
                backend: "FAKE".into(),
                kind: DeviceKind::Gpu,
                memory_total_bytes: 1 << 50,
                memory_free_bytes: free,
            })
            .collect();
        devices.push(Device {
            index: self.gpus as usize,
            ..Device::host_cpu()
        });
        devices
    }

    fn free_memory(&self, index: usize) -> Option<u64> {
        (index < self.gpus as usize).then(|| self.gpu_free.load(Ordering::SeqCst))
    }

    fn layer_count(&self, _model: &ModelConfig) -> Result<u32, EngineError> {
        Ok(FAKE_LAYERS)
    }
}

/// Holds loads back while closed, so that a test can fill a pool's queue before anything runs
/// and then check the order in which it is served.
#[derive(Default)]
pub struct LoadGate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl LoadGate {
    /// A load never waits longer than this, so that a test failing with the gate closed cannot
    /// leave a blocked thread behind its runtime's shutdown.
    const MAX_WAIT: Duration = Duration::from_secs(10);

    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    /// Called on the loading thread.
    fn pass(&self) {
        let until = Instant::now() + Self::MAX_WAIT;
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            closed = self.opened.wait_timeout(closed, left).unwrap().0;
        }
    }
}

struct FakeWeights {
    live: Arc<AtomicU32>,
    started: Arc<Mutex<Vec<String>>>,
}

impl Drop for FakeWeights {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Weights for FakeWeights {
    fn kv_bytes(&self, model: &ModelConfig) -> u64 {
        u64::from(model.n_ctx) * u64::from(model.kv_streams()) * 1024
    }

    fn run_session(
        &self,
        model: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Session),
    ) -> Result<(), EngineError> {
        let mut session = FakeSession::new(model.slots as usize, model.n_ctx, 512);
        session.streams = model.kv_streams() as usize;
        session.started = Some(Arc::clone(&self.started));
        serve(&mut session);
        Ok(())
    }

    fn load_adapter(
        self: Arc<Self>,
        path: &std::path::Path,
    ) -> Result<Arc<dyn LoadedAdapter>, String> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.contains("broken") {
            return Err(format!(
                "{} is not an adapter of this model",
                path.display()
            ));
        }
        Ok(Arc::new(FakeAdapter { name }))
    }
}

/// A fake adapter: only its name, which tags the tokens computed under it.
pub(crate) struct FakeAdapter {
    pub(crate) name: String,
}

impl LoadedAdapter for FakeAdapter {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// How a set of fake adapters tags tokens: `a+b*0.5`, empty for the base.
pub(crate) fn fake_label(set: &ActiveSet) -> String {
    let mut names: Vec<String> = set
        .adapters
        .iter()
        .map(|(a, scale)| {
            let name = &a.as_any().downcast_ref::<FakeAdapter>().expect("fake").name;
            match *scale {
                1.0 => name.clone(),
                scale => format!("{name}*{scale}"),
            }
        })
        .collect();
    names.sort();
    names.join("+")
}

pub(crate) struct FakeSession {
    slots: usize,
    streams: usize,
    n_ctx: u32,
    n_batch: usize,
    /// Tokens in each sequence's KV.
    kv: HashMap<SeqId, Vec<i32>>,
    /// For each token in `kv`, the adapters it was computed under.
    tags: HashMap<SeqId, Vec<String>>,
    /// The adapters applied now, as [`fake_label`] writes them.
    applied: String,
    /// Times the applied set changed.
    pub(crate) adapter_switches: usize,
    /// The applied set of every decode call, in order.
    pub(crate) batch_sets: Vec<String>,
    /// The most runs of consecutive sequence ids in one batch: llama.cpp computes each run
    /// in a pass of its own.
    pub(crate) max_runs_in_one_batch: usize,
    generated: HashMap<SeqId, usize>,
    pub(crate) last_batch_len: usize,
    /// The sequence ids of the last batch, in order, each once.
    pub(crate) last_batch_seqs: Vec<SeqId>,
    pub(crate) max_sequences_in_one_batch: usize,
    pub(crate) copies: usize,
    /// Copies come back unusable (emptied), as a real engine's do when a sliding-window
    /// model's window was overwritten: tests that the scheduler then prefills.
    pub(crate) refuse_reuse: bool,
    /// Prompt tokens computed (not copied from a cached prefix).
    pub(crate) prompt_tokens_decoded: usize,
    /// Where to record the user text of each prompt as it starts (tokenizing is the first
    /// thing the scheduler does with an admitted job).
    started: Option<Arc<Mutex<Vec<String>>>>,
}

impl FakeSession {
    pub(crate) fn new(slots: usize, n_ctx: u32, n_batch: usize) -> Self {
        Self {
            slots,
            streams: slots,
            n_ctx,
            n_batch,
            kv: HashMap::new(),
            tags: HashMap::new(),
            applied: String::new(),
            adapter_switches: 0,
            batch_sets: Vec::new(),
            max_runs_in_one_batch: 0,
            generated: HashMap::new(),
            last_batch_len: 0,
            last_batch_seqs: Vec::new(),
            max_sequences_in_one_batch: 0,
            copies: 0,
            refuse_reuse: false,
            prompt_tokens_decoded: 0,
            started: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn live_sequences(&self) -> Vec<SeqId> {
        let mut live: Vec<SeqId> = self
            .kv
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| *k)
            .collect();
        live.sort();
        live
    }

    fn echo(&self, seq: SeqId) -> Vec<u8> {
        let kv = &self.kv[&seq];
        let user_start = kv.iter().position(|t| *t == SEPARATOR).map_or(0, |p| p + 1);
        let prompt_end = kv.iter().position(|t| *t == END).unwrap_or(kv.len());
        let user: Vec<u8> = kv[user_start..prompt_end]
            .iter()
            .map(|t| *t as u8)
            .collect();
        let mut tags = self.tags[&seq].clone();
        tags.dedup();
        let head = match tags.as_slice() {
            [] => "echo: ".to_owned(),
            [tag] if tag.is_empty() => "echo: ".to_owned(),
            [tag] => format!("echo[{tag}]: "),
            _ => "MIXED: ".to_owned(),
        };
        [head.as_bytes(), &user].concat()
    }
}

impl Session for FakeSession {
    fn slots(&self) -> usize {
        self.slots
    }

    fn streams(&self) -> usize {
        self.streams
    }

    fn n_ctx_per_seq(&self) -> u32 {
        self.n_ctx
    }

    fn n_batch(&self) -> usize {
        self.n_batch
    }

    fn tokenize(&self, prompt: &RenderedPrompt) -> Result<Vec<TokenId>, EngineError> {
        if let Some(started) = &self.started {
            started.lock().unwrap().push(prompt.user.clone());
        }
        let system: Vec<i32> = prompt
            .system
            .as_deref()
            .unwrap_or("")
            .bytes()
            .map(i32::from)
            .collect();
        let mut tokens = system;
        tokens.push(SEPARATOR);
        tokens.extend(prompt.user.bytes().map(i32::from));
        tokens.push(END);
        Ok(tokens)
    }

    fn begin(
        &mut self,
        seq: SeqId,
        _params: &SamplingParams,
        _output: &OutputSpec,
    ) -> Result<(), EngineError> {
        self.generated.insert(seq, 0);
        Ok(())
    }

    fn decode(&mut self, batch: &[BatchItem]) -> Result<(), EngineError> {
        let mut seqs: Vec<SeqId> = batch.iter().map(|b| b.seq).collect();
        seqs.dedup();
        self.max_sequences_in_one_batch = self.max_sequences_in_one_batch.max(seqs.len());
        self.last_batch_len = batch.len();
        self.last_batch_seqs = seqs.clone();
        self.batch_sets.push(self.applied.clone());
        let runs = 1 + seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
        self.max_runs_in_one_batch = self.max_runs_in_one_batch.max(runs);
        for item in batch {
            // Generated tokens are `1000 + byte` (see `sample`); the rest come from prompts.
            if item.token < 1000 {
                self.prompt_tokens_decoded += 1;
            }
            let kv = self.kv.entry(item.seq).or_default();
            assert_eq!(kv.len(), item.pos as usize, "positions are contiguous");
            kv.push(item.token);
            self.tags
                .entry(item.seq)
                .or_default()
                .push(self.applied.clone());
        }
        Ok(())
    }

    fn sample(&mut self, seq: SeqId, _batch_index: usize) -> Sampled {
        let echo = self.echo(seq);
        if String::from_utf8_lossy(&echo).contains("PANIC") {
            panic!("fake engine asked to panic");
        }
        let n = self.generated.get_mut(&seq).expect("sequence begun");
        let out = match echo.get(*n) {
            Some(byte) => Sampled {
                token: 1000 + i32::from(*byte),
                end_of_generation: false,
                piece: vec![*byte],
            },
            None => Sampled {
                token: 2,
                end_of_generation: true,
                piece: Vec::new(),
            },
        };
        *n += 1;
        out
    }

    fn release(&mut self, seq: SeqId) {
        self.generated.remove(&seq);
    }

    fn truncate(&mut self, seq: SeqId, len: usize) -> usize {
        if let Some(kv) = self.kv.get_mut(&seq) {
            kv.truncate(len);
        }
        if let Some(tags) = self.tags.get_mut(&seq) {
            tags.truncate(len);
        }
        len
    }

    fn copy_prefix(&mut self, from: SeqId, to: SeqId, len: usize) -> usize {
        let prefix = self.kv[&from][..len].to_vec();
        self.kv.insert(to, prefix);
        let tags = self.tags[&from][..len].to_vec();
        self.tags.insert(to, tags);
        self.copies += 1;
        if self.refuse_reuse {
            self.truncate(to, 0)
        } else {
            len
        }
    }

    fn set_adapters(&mut self, set: &ActiveSet) -> Result<(), EngineError> {
        let label = fake_label(set);
        if label != self.applied {
            self.applied = label;
            self.adapter_switches += 1;
        }
        Ok(())
    }
}
