//! The llama.cpp backend through llama-cpp-2. One process-wide llama backend; weights loaded
//! per model (memory-mapped); one context per replica, on that replica's engine thread, with
//! a unified KV cache shared by its slots and its cached prompt prefixes.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use genrt_functions::{ChatTurn, OutputSpec, RenderedPrompt, SamplingParams};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{json_schema_to_grammar, send_logs_to_tracing, LlamaStateSeqFlags, LogOptions};

use super::cores::{Cores, Turn};
use super::devices::{Device, DeviceKind, Placement};
use super::threadpool::{self, Lease};
use super::tool::{ModelTool, ToolError};
use super::{
    ActiveSet, Backend, BatchItem, Embedder, Embedding, EngineError, LoadedAdapter, Sampled, SeqId,
    Session, TokenId, Weights,
};
use crate::ModelConfig;

const N_BATCH: u32 = 512;
/// Recent tokens the repetition penalty looks at.
const PENALTY_LAST_N: i32 = 64;

/// What [`load_backends`] loaded: from which folder, and which backends registered.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendsInfo {
    pub dir: PathBuf,
    /// Registered backend names, e.g. `["CUDA", "CPU"]`.
    pub backends: Vec<String>,
}

/// Loads llama.cpp's backend modules (`libggml-cpu*.so`, `libggml-cuda.so`, ...), once per
/// process, before anything else calls llama.cpp. The folder is `dir` when given; otherwise
/// the executable's own folder when it holds backend modules (a deployed binary ships them
/// beside itself, and `scripts/build-cuda-backend.sh` puts the CUDA one there); otherwise the
/// folder the build left them in (`cargo run`, `cargo test`). Of the CPU variants, llama.cpp
/// picks the best the processor supports. The first call decides; later calls return its
/// result whatever `dir` they pass.
pub fn load_backends(dir: Option<&Path>) -> Result<BackendsInfo, EngineError> {
    static LOADED: OnceLock<Result<BackendsInfo, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            let dir = match dir {
                Some(dir) => dir.to_path_buf(),
                None => default_backends_dir().ok_or_else(|| {
                    "no folder of llama.cpp backend modules: set engine.backends_dir".to_string()
                })?,
            };
            if !dir.is_dir() {
                return Err(format!("backends folder {} does not exist", dir.display()));
            }
            llama_cpp_2::llama_backend::load_backends_from_path(&dir);
            explain_unloaded_modules(&dir);
            if !batch_invariant::install() {
                tracing::warn!("could not make llama.cpp's CPU kernels batch-invariant: greedy output may depend on batching and on the prefix cache");
            }
            let backends = registered_backends();
            tracing::info!(dir = %dir.display(), ?backends, "llama.cpp backends loaded");
            if !backends.iter().any(|b| b == "CPU") {
                return Err(format!(
                    "no CPU backend could be loaded from {}: it must hold a libggml-cpu*.so this processor can run",
                    dir.display()
                ));
            }
            Ok(BackendsInfo { dir, backends })
        })
        .clone()
        .map_err(EngineError::Load)
}

/// Batch invariance for the CPU backend.
///
/// llama.cpp's CPU kernels pick their algorithm by batch shape: flash attention takes a tiled
/// path for 64 or more query tokens of a sequence and splits the KV across threads for a
/// single token of a single sequence over 512 or more cells; matrix products take llamafile's
/// or the tiled kernels for several rows. Each sums in another order, so a token's logits
/// depend on what else was in its batch and on how its prompt was cut into chunks: a prompt
/// whose prefix came from the cache, or a chat whose history was generated one token at a
/// time, would then get a different greedy answer than the same prompt prefilled whole (the
/// prefix-cache tests in tests/tests/prefix_cache.rs catch exactly that). ggml's reference
/// mode (`ggml_backend_cpu_set_use_ref`) computes every query and row the same way whatever
/// the batch, the guarantee SGLang's and vLLM's deterministic modes give.
///
/// llama.cpp does not expose its context's CPU backend, so the mode is set the one way it can
/// reach it: the CPU registry's `get_proc_address` is wrapped, so that the
/// `ggml_backend_set_n_threads` every context looks up and calls before each graph also sets
/// reference mode on the backend it is given. The registry is the CPU module's own static,
/// its layout that of `ggml-backend-impl.h` at the pinned version (checked by API version).
mod batch_invariant {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::sync::OnceLock;

    type GetProcAddress =
        unsafe extern "C" fn(reg: *mut c_void, name: *const c_char) -> *mut c_void;
    type SetNThreads = unsafe extern "C" fn(backend: *mut c_void, n_threads: c_int);
    type SetUseRef = unsafe extern "C" fn(backend: *mut c_void, use_ref: bool);

    /// `struct ggml_backend_reg` of ggml-backend-impl.h.
    #[repr(C)]
    struct Registry {
        api_version: c_int,
        get_name: *const c_void,
        get_device_count: *const c_void,
        get_device: *const c_void,
        get_proc_address: Option<GetProcAddress>,
        context: *mut c_void,
    }

    /// The registry layout above is that of this API version.
    const GGML_BACKEND_API_VERSION: c_int = 3;

    struct Originals {
        get_proc_address: GetProcAddress,
        set_n_threads: SetNThreads,
        set_use_ref: SetUseRef,
    }

    static ORIGINALS: OnceLock<Originals> = OnceLock::new();

    /// Wraps the CPU registry once per process; returns whether reference mode is in place.
    pub(super) fn install() -> bool {
        let reg = unsafe { llama_cpp_sys_2::ggml_backend_reg_by_name(c"CPU".as_ptr()) };
        if reg.is_null() {
            return false;
        }
        let reg = reg.cast::<Registry>();
        // SAFETY: `reg` is the CPU module's registry, a static that lives as long as the
        // process; it is read and written here before any context exists (load_backends runs
        // once, before llama.cpp is initialised), so nothing reads it concurrently.
        unsafe {
            if (*reg).api_version != GGML_BACKEND_API_VERSION {
                return false;
            }
            let Some(get_proc_address) = (*reg).get_proc_address else {
                return false;
            };
            let lookup = |name: &CStr| get_proc_address(reg.cast(), name.as_ptr());
            let set_n_threads = lookup(c"ggml_backend_set_n_threads");
            let set_use_ref = lookup(c"ggml_backend_cpu_set_use_ref");
            if set_n_threads.is_null() || set_use_ref.is_null() {
                return false;
            }
            let originals = Originals {
                get_proc_address,
                set_n_threads: std::mem::transmute::<*mut c_void, SetNThreads>(set_n_threads),
                set_use_ref: std::mem::transmute::<*mut c_void, SetUseRef>(set_use_ref),
            };
            if ORIGINALS.set(originals).is_err() {
                return true;
            }
            (*reg).get_proc_address = Some(wrapped_get_proc_address);
        }
        true
    }

    unsafe extern "C" fn wrapped_get_proc_address(
        reg: *mut c_void,
        name: *const c_char,
    ) -> *mut c_void {
        let originals = ORIGINALS.get().expect("installed before the wrapper");
        // SAFETY: llama.cpp passes a NUL-terminated name.
        if unsafe { CStr::from_ptr(name) } == c"ggml_backend_set_n_threads" {
            return set_n_threads_in_reference_mode as SetNThreads as *mut c_void;
        }
        unsafe { (originals.get_proc_address)(reg, name) }
    }

    unsafe extern "C" fn set_n_threads_in_reference_mode(backend: *mut c_void, n_threads: c_int) {
        let originals = ORIGINALS.get().expect("installed before the wrapper");
        // SAFETY: `backend` is a CPU backend (the registry handed this function out for it).
        unsafe {
            (originals.set_use_ref)(backend, true);
            (originals.set_n_threads)(backend, n_threads);
        }
    }
}

fn is_backend_module(name: &str) -> bool {
    name.starts_with("libggml-") && name.ends_with(".so") && name != "libggml-base.so"
}

fn default_backends_dir() -> Option<PathBuf> {
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .filter(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| is_backend_module(&e.file_name().to_string_lossy()))
            })
        });
    beside_exe.or_else(|| llama_cpp_sys_2::BACKENDS_DIR.map(PathBuf::from))
}

/// A release build of llama.cpp skips a module it cannot open without a word, which would
/// leave a GPU machine silently on the CPU (a CUDA module without the CUDA runtime libraries
/// beside it, say). Loading such a module again by its path makes llama.cpp log why.
fn explain_unloaded_modules(dir: &Path) {
    let registered: Vec<String> = registered_backends()
        .iter()
        .map(|b| b.to_lowercase())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(backend) = file
            .strip_prefix("libggml-")
            .and_then(|f| f.strip_suffix(".so"))
            .filter(|b| *b != "base" && !b.starts_with("cpu"))
        else {
            continue;
        };
        if registered.iter().any(|r| r == backend) {
            continue;
        }
        let path = CString::new(entry.path().to_string_lossy().as_bytes()).expect("no NUL");
        let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(path.as_ptr()) };
        if reg.is_null() {
            tracing::warn!(module = %entry.path().display(), "backend module could not be loaded (llama.cpp's reason is logged above): its devices will not be used");
        }
    }
}

fn registered_backends() -> Vec<String> {
    (0..unsafe { llama_cpp_sys_2::ggml_backend_reg_count() })
        .map(|i| {
            let reg = unsafe { llama_cpp_sys_2::ggml_backend_reg_get(i) };
            let name = unsafe { llama_cpp_sys_2::ggml_backend_reg_name(reg) };
            if name.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
        .collect()
}

/// llama.cpp may be initialised once per process; every backend value shares it, and so must
/// anything else in the process that calls llama.cpp directly (the benchmarks do). Loads the
/// backend modules from the default folder if [`load_backends`] was not called first.
pub fn llama_backend() -> Result<Arc<LlamaBackend>, EngineError> {
    static BACKEND: OnceLock<Result<Arc<LlamaBackend>, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            load_backends(None).map_err(|e| e.to_string())?;
            LlamaBackend::init()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(EngineError::Load)
}

#[derive(Clone)]
pub struct LlamaCppBackend {
    backend: Arc<LlamaBackend>,
    tool: Option<ModelTool>,
}

impl LlamaCppBackend {
    pub fn new() -> Result<Self, EngineError> {
        Ok(Self {
            backend: llama_backend()?,
            tool: None,
        })
    }

    /// Probes files in a child process with `tool` (see `engine::tool`).
    pub fn with_tool(mut self, tool: ModelTool) -> Self {
        self.tool = Some(tool);
        self
    }
}

impl Backend for LlamaCppBackend {
    fn probe(&self, path: &Path, cancelled: &dyn Fn() -> bool) -> Result<(), ToolError> {
        match &self.tool {
            // A full load (every tensor checked, none read) in a child that a bad file may
            // crash.
            Some(tool) => tool.probe(path, cancelled),
            // Without a tool (an embedder that gave none), in this process and so only as far
            // as is cheap: `vocab_only` reads the architecture, hyperparameters and vocabulary
            // and allocates no tensors; llama.cpp refuses an unknown architecture here as it
            // would at a full load.
            None => {
                let params = LlamaModelParams::default().with_vocab_only(true);
                LlamaModel::load_from_file(&self.backend, path, &params)
                    .map(drop)
                    .map_err(|e| ToolError::Refused(e.to_string()))
            }
        }
    }

    fn probe_adapter(
        &self,
        base: &Path,
        adapter: &Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), ToolError> {
        match &self.tool {
            Some(tool) => tool.probe_adapter(base, adapter, cancelled),
            // Without a tool, genrt's own reader's checks only (loading the base here would
            // cost its weights' memory).
            None => Ok(()),
        }
    }

    fn load(
        &self,
        model: &ModelConfig,
        placement: &Placement,
    ) -> Result<Arc<dyn Weights>, EngineError> {
        if !model.path.is_file() {
            return Err(EngineError::Load(format!(
                "model file {} does not exist",
                model.path.display()
            )));
        }
        let mut params = LlamaModelParams::default().with_n_gpu_layers(placement.n_gpu_layers);
        if let Some(gpu) = &placement.gpu {
            // One GPU per model: weights, KV cache and compute buffers together on `main_gpu`
            // (a replica never splits across cards, so its memory is budgeted on one).
            params = params
                .with_split_mode(LlamaSplitMode::None)
                .with_main_gpu(gpu.ordinal as i32);
        }
        let loaded = LlamaModel::load_from_file(&self.backend, &model.path, &params)
            .map_err(|e| EngineError::Load(format!("{}: {e}", model.path.display())))?;
        // Models without an embedded chat template get a plain layout; see `format`.
        let template = loaded.chat_template(None).ok();
        let vocab = loaded.vocab();
        let eog_tokens = vocab.tokens().filter(|t| vocab.is_eog(*t)).collect();
        let tokenizer = super::tokenize::PromptTokenizer::new(&loaded);
        let kv_on_gpu = placement.gpu.is_some() && placement.n_gpu_layers > 0;
        // A model with every layer on a GPU leaves its CPU threads next to idle; any other
        // computes on the cores.
        let on_gpu = placement.all_on_gpu(loaded.n_layer());
        // SAFETY: the model pointer is valid while `loaded` lives.
        let sliding_window = unsafe { llama_cpp_sys_2::llama_model_n_swa(raw_model(&loaded)) } > 0;
        let copy = if kv_on_gpu || sliding_window {
            CopyMode::Stream
        } else {
            CopyMode::State
        };
        Ok(Arc::new(LlamaWeights {
            backend: Arc::clone(&self.backend),
            template,
            eog_tokens,
            model: loaded,
            loras: std::sync::Mutex::new(()),
            copy,
            tokenizer,
            takes_turns: !on_gpu,
        }))
    }

    fn devices(&self) -> Vec<Device> {
        llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .map(|d| Device {
                index: d.index,
                name: d.name,
                description: d.description,
                backend: d.backend,
                kind: match d.device_type {
                    llama_cpp_2::LlamaBackendDeviceType::Gpu => DeviceKind::Gpu,
                    llama_cpp_2::LlamaBackendDeviceType::IntegratedGpu => DeviceKind::IntegratedGpu,
                    llama_cpp_2::LlamaBackendDeviceType::Accelerator => DeviceKind::Accelerator,
                    _ => DeviceKind::Cpu,
                },
                memory_total_bytes: d.memory_total as u64,
                memory_free_bytes: d.memory_free as u64,
            })
            .collect()
    }

    fn free_memory(&self, index: usize) -> Option<u64> {
        if index >= unsafe { llama_cpp_sys_2::ggml_backend_dev_count() } {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        unsafe {
            let dev = llama_cpp_sys_2::ggml_backend_dev_get(index);
            llama_cpp_sys_2::ggml_backend_dev_memory(dev, &raw mut free, &raw mut total);
        }
        (total > 0).then_some(free as u64)
    }

    fn layer_count(&self, model: &ModelConfig) -> Result<u32, EngineError> {
        super::gguf::GgufHeader::open(&model.path)
            .and_then(|header| header.block_count())
            .map_err(|e| EngineError::Load(format!("{}: {e}", model.path.display())))
    }
}

struct LlamaWeights {
    backend: Arc<LlamaBackend>,
    model: LlamaModel,
    template: Option<LlamaChatTemplate>,
    /// Every end-of-generation token, masked out when `ignore_eos` is set.
    eog_tokens: Vec<LlamaToken>,
    /// Guards llama.cpp's model-wide list of adapters (`llama_model::loras`, unsynchronised):
    /// written when an adapter is loaded or freed, read when one of the model's contexts
    /// reserves its graph (at creation, and at the first decode after its adapters change).
    loras: std::sync::Mutex<()>,
    /// How this model's contexts copy a cached prefix between streams.
    copy: CopyMode,
    tokenizer: super::tokenize::PromptTokenizer,
    /// Its contexts compute on the CPU, in turns with the process's other CPU contexts
    /// (see `cores`).
    takes_turns: bool,
}

impl LlamaWeights {
    /// Waits for the cores a graph of `threads` threads needs, where this model computes on
    /// the CPU.
    fn turn(&self, threads: u32) -> Option<Turn<'static>> {
        self.takes_turns.then(|| Cores::machine().turn(threads))
    }
}

/// KV cells of one replica: one full context for each of its streams, the slots' and the
/// prefix cache's.
fn kv_cells(config: &ModelConfig) -> u32 {
    config.n_ctx * config.kv_streams()
}

impl Weights for LlamaWeights {
    fn kv_bytes(&self, config: &ModelConfig) -> u64 {
        let m = &self.model;
        let head_dim = (m.n_embd() as u64) / u64::from(m.n_head().max(1));
        // K and V, f16 (2 bytes), per layer, per KV head.
        let per_cell = 2 * 2 * u64::from(m.n_layer()) * u64::from(m.n_head_kv()) * head_dim;
        per_cell * u64::from(kv_cells(config))
    }

    fn load_adapter(self: Arc<Self>, path: &Path) -> Result<Arc<dyn LoadedAdapter>, String> {
        let name = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: the model pointer is valid while `self` lives, and the adapter keeps `self`
        // alive. llama.cpp registers the adapter in the model's adapter list, which the
        // `loras` lock guards against the other replicas' graph reserves.
        let ptr = {
            let _list = self.loras.lock().expect("adapter list lock");
            unsafe {
                llama_cpp_sys_2::llama_adapter_lora_init(raw_model(&self.model), name.as_ptr())
            }
        };
        if ptr.is_null() {
            // llama.cpp logs the reason (wrong architecture, a tensor of another shape).
            return Err(format!(
                "llama.cpp cannot load {} as a LoRA adapter of this model",
                path.display()
            ));
        }
        Ok(Arc::new(LlamaAdapter {
            ptr,
            _weights: self,
        }))
    }

    fn run_session(
        &self,
        config: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Session),
    ) -> Result<(), EngineError> {
        let threads = config.threads() as i32;
        let slots = config.slots.max(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(kv_cells(config)))
            .with_n_batch(N_BATCH)
            .with_n_ubatch(N_BATCH)
            .with_n_seq_max(config.kv_streams())
            // One KV stream per sequence: a sequence's cells and attention arithmetic are then
            // the same whatever else runs beside it, so batching never changes a greedy
            // result. (A unified cache interleaves sequences' cells, which reorders float sums.)
            .with_kv_unified(false)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        // Before the context, so that it is dropped after it.
        let pool = Lease::take(threads, threadpool::ENGINE_POLL);
        // Creating a context reserves its graph, which reads the model's adapter list.
        let ctx = {
            let _list = self.loras.lock().expect("adapter list lock");
            self.model.new_context(&self.backend, params)
        }
        .map_err(|e| EngineError::Load(format!("cannot create context: {e}")))?;
        let raw = raw_context(&ctx, raw_model(&self.model));
        attach(raw, pool.as_ref());
        let mut session = LlamaSession {
            weights: self,
            raw,
            ctx,
            applied: ActiveSet::base(),
            reserve_pending: false,
            batch: LlamaBatch::new(N_BATCH as usize, 1),
            samplers: HashMap::new(),
            slots: slots as usize,
            streams: config.kv_streams() as usize,
            n_ctx: config.n_ctx,
            copy: self.copy,
            threads: threads as u32,
        };
        serve(&mut session);
        Ok(())
    }

    fn run_embeddings(
        &self,
        config: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Embedder),
    ) -> Result<(), EngineError> {
        let threads = config.threads() as i32;
        // Mean pooling needs a whole text in one micro-batch, so both batch sizes are the
        // context: a text longer than that is refused rather than split.
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(config.n_ctx))
            .with_n_batch(config.n_ctx)
            .with_n_ubatch(config.n_ctx)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let pool = Lease::take(threads, threadpool::ENGINE_POLL);
        let ctx = {
            let _list = self.loras.lock().expect("adapter list lock");
            self.model.new_context(&self.backend, params)
        }
        .map_err(|e| EngineError::Load(format!("cannot create embedding context: {e}")))?;
        attach(raw_context(&ctx, raw_model(&self.model)), pool.as_ref());
        let mut embedder = LlamaEmbedder {
            weights: self,
            ctx,
            n_ctx: config.n_ctx,
            threads: threads as u32,
        };
        serve(&mut embedder);
        Ok(())
    }
}

struct LlamaSession<'a> {
    weights: &'a LlamaWeights,
    /// The context's own pointer, for the adapter call llama-cpp-2 does not wrap (see
    /// [`raw_context`]); `None` if it could not be found, and then adapters are refused.
    raw: Option<*mut llama_cpp_sys_2::llama_context>,
    ctx: LlamaContext<'a>,
    /// The adapters the context applies now, held so that they stay loaded while it does.
    /// Declared after `ctx`: dropped after it.
    applied: ActiveSet,
    /// The adapters changed: the next decode reserves the graph, reading the model's adapter
    /// list (under `LlamaWeights::loras`).
    reserve_pending: bool,
    batch: LlamaBatch<'static>,
    samplers: HashMap<SeqId, Sampler>,
    slots: usize,
    streams: usize,
    n_ctx: u32,
    copy: CopyMode,
    threads: u32,
}

/// How a cached prefix is copied from one KV stream to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMode {
    /// Through the sequence-state API, at once: only the cells the source uses, written into
    /// the destination in the same order, byte for byte. `kv_cache_seq_cp` between streams
    /// would copy every cell of the stream (used or not) at the next decode, then reserve
    /// the worst-case graph again.
    State,
    /// `kv_cache_seq_cp`, for KV on a GPU (the state would go to the host and back) and for
    /// models with sliding-window layers: their state leaves out the cells outside the
    /// window of the source's last position, which a shorter prefix needs, while the stream
    /// keeps them all (llama.cpp allocates full-size sliding-window caches, `swa_full`).
    /// The copy runs at the start of the next decode, in the order the copies were asked
    /// for; everything else here is immediate, and the scheduler asks for a slot's spill
    /// before the copy that overwrites it.
    Stream,
}

impl LlamaSession<'_> {
    fn format(
        &self,
        system: Option<&str>,
        history: &[ChatTurn],
        user: Option<&str>,
    ) -> Result<String, EngineError> {
        let turns = system
            .map(|s| ("system", s))
            .into_iter()
            .chain(
                history
                    .iter()
                    .map(|t| (t.role.as_str(), t.content.as_str())),
            )
            .chain(user.map(|u| ("user", u)));
        let Some(template) = &self.weights.template else {
            // A model without a chat template gets the turns as plain paragraphs.
            let mut text = String::new();
            for (_, content) in turns {
                text.push_str(content);
                text.push_str("\n\n");
            }
            return Ok(text);
        };
        let messages = turns
            .map(|(role, content)| {
                LlamaChatMessage::new(role.to_owned(), content.to_owned())
                    .map_err(|e| EngineError::Decode(format!("invalid chat message: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.weights
            .model
            .apply_chat_template(template, &messages, user.is_some())
            .map_err(|e| EngineError::Decode(format!("chat template failed: {e}")))
    }

    fn tokens(&self, text: &str) -> Vec<i32> {
        self.weights.tokenizer.tokenize(&self.weights.model, text)
    }
}

struct LlamaEmbedder<'a> {
    weights: &'a LlamaWeights,
    ctx: LlamaContext<'a>,
    n_ctx: u32,
    threads: u32,
}

impl Embedder for LlamaEmbedder<'_> {
    fn embed(&mut self, text: &str) -> Result<Embedding, EngineError> {
        let tokens: Vec<i32> = self
            .weights
            .model
            .vocab()
            .tokenize(text.as_bytes(), true, false)
            .into_iter()
            .map(|t| t.0)
            .collect();
        if tokens.len() as u32 > self.n_ctx {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: tokens.len() as u32,
                max_tokens: 0,
                n_ctx: self.n_ctx,
            });
        }
        let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken(t), i as i32, &[0], true)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        self.ctx.clear_kv_cache();
        let turn = self.weights.turn(self.threads);
        self.ctx
            .decode(&mut batch)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
        drop(turn);
        let pooled = self
            .ctx
            .embeddings_seq_ith(0)
            .map_err(|e| EngineError::Decode(format!("no pooled embedding: {e}")))?;
        let norm = pooled
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::EPSILON);
        Ok(Embedding {
            vector: pooled.iter().map(|x| x / norm).collect(),
            tokens: tokens.len() as u32,
        })
    }
}

/// How one sequence picks its tokens.
enum Sampler {
    /// Plain greedy decoding reads the logits directly: llama.cpp's sampler chain would copy
    /// the whole vocabulary into a candidate array first, for every sequence at every step.
    Greedy {
        ignore_eos: bool,
    },
    Chain(LlamaSampler),
    /// Output under a grammar (a JSON schema, GBNF). The grammar is checked against the token
    /// the chain drew, and applied to the whole vocabulary only when that token does not fit,
    /// as llama.cpp's `common_sampler_sample` does: masking ~50 000 candidates through the
    /// grammar at every step made constrained decoding several times slower than free
    /// decoding. The distribution is the same: a token t that fits, of unconstrained
    /// probability p, comes out with p (drawn and kept) plus (1 − P(fits)) · p / P(fits)
    /// (drawn again under the grammar), which is p / P(fits), its constrained probability.
    Constrained {
        grammar: LlamaSampler,
        chain: LlamaSampler,
    },
}

/// Whether `grammar`, in its current state, allows `token` next.
fn fits(grammar: &mut LlamaSampler, token: LlamaToken) -> bool {
    let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
    grammar.apply(&mut one);
    one.data[0].logit() != f32::NEG_INFINITY
}

/// The most likely token, skipping `excluded` ones; ties go to the lowest id, as in
/// llama.cpp's greedy sampler.
fn argmax(logits: &[f32], excluded: &[LlamaToken]) -> LlamaToken {
    let mut best: Option<(usize, f32)> = None;
    for (i, &logit) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| logit > b) && !excluded.contains(&LlamaToken(i as i32)) {
            best = Some((i, logit));
        }
    }
    LlamaToken(best.map_or(0, |(i, _)| i) as i32)
}

fn grammar_for(output: &OutputSpec) -> Result<Option<String>, EngineError> {
    match output {
        OutputSpec::Text => Ok(None),
        OutputSpec::Json { json_schema } => {
            let schema = json_schema
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            json_schema_to_grammar(&schema.to_string())
                .map(Some)
                .map_err(|e| EngineError::Grammar(format!("json_schema: {e}")))
        }
        OutputSpec::Grammar { grammar } => Ok(Some(grammar.clone())),
    }
}

impl Session for LlamaSession<'_> {
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
        N_BATCH as usize
    }

    fn tokenize(&self, prompt: &RenderedPrompt) -> Result<Vec<TokenId>, EngineError> {
        if prompt.raw {
            return Ok(self.tokens(&prompt.user));
        }
        let full = self.format(
            prompt.system.as_deref(),
            &prompt.history,
            Some(&prompt.user),
        )?;
        Ok(self.tokens(&full))
    }

    fn begin(
        &mut self,
        seq: SeqId,
        p: &SamplingParams,
        output: &OutputSpec,
    ) -> Result<(), EngineError> {
        let grammar = grammar_for(output)?;
        if p.temperature == 0.0 && grammar.is_none() && p.repeat_penalty == 1.0 {
            self.samplers.insert(
                seq,
                Sampler::Greedy {
                    ignore_eos: p.ignore_eos,
                },
            );
            return Ok(());
        }
        let grammar = grammar
            .map(|g| {
                LlamaSampler::grammar(&self.weights.model, &g, "root")
                    .map_err(|e| EngineError::Grammar(e.to_string()))
            })
            .transpose()?;
        let mut chain = Vec::with_capacity(6);
        if p.ignore_eos {
            let biases: Vec<LlamaLogitBias> = self
                .weights
                .eog_tokens
                .iter()
                .map(|t| LlamaLogitBias::new(*t, f32::NEG_INFINITY))
                .collect();
            chain.push(LlamaSampler::logit_bias(
                self.weights.model.n_vocab(),
                &biases,
            ));
        }
        if p.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                self.weights.model.n_vocab(),
                PENALTY_LAST_N,
                p.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if p.temperature == 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            // llama.cpp draws a fresh random seed for this value.
            const RANDOM_SEED: u32 = u32::MAX;
            chain.push(LlamaSampler::top_k(p.top_k as i32));
            chain.push(LlamaSampler::top_p(p.top_p, 1));
            chain.push(LlamaSampler::min_p(p.min_p, 1));
            chain.push(LlamaSampler::temp(p.temperature));
            chain.push(LlamaSampler::dist(p.seed.unwrap_or(RANDOM_SEED)));
        }
        let chain = LlamaSampler::chain_simple(chain);
        let sampler = match grammar {
            Some(grammar) => Sampler::Constrained { grammar, chain },
            None => Sampler::Chain(chain),
        };
        self.samplers.insert(seq, sampler);
        Ok(())
    }

    fn decode(&mut self, items: &[BatchItem]) -> Result<(), EngineError> {
        self.batch.clear();
        for item in items {
            self.batch
                .add(LlamaToken(item.token), item.pos, &[item.seq], item.logits)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        let weights = self.weights;
        // The turn first: waiting for one must not hold up the model's other contexts, which
        // take the adapter list's lock to start or to load an adapter. (Declared first, the
        // turn is dropped after the lock.)
        let _turn = weights.turn(self.threads);
        let _list = self
            .reserve_pending
            .then(|| weights.loras.lock().expect("adapter list lock"));
        self.reserve_pending = false;
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| EngineError::Decode(e.to_string()))
    }

    fn sample(&mut self, seq: SeqId, batch_index: usize) -> Sampled {
        let sampler = self
            .samplers
            .get_mut(&seq)
            .expect("sampler begun for sequence");
        let token = match sampler {
            Sampler::Chain(chain) => chain.sample(&self.ctx, batch_index as i32),
            Sampler::Constrained { grammar, chain } => {
                let idx = batch_index as i32;
                let mut candidates = self.ctx.token_data_array_ith(idx);
                chain.apply(&mut candidates);
                let drawn = candidates.selected_token().filter(|t| fits(grammar, *t));
                let token = drawn.or_else(|| {
                    let mut candidates = self.ctx.token_data_array_ith(idx);
                    grammar.apply(&mut candidates);
                    chain.apply(&mut candidates);
                    candidates.selected_token()
                });
                // Nothing fits (a grammar at a dead end): end the text, whose check then fails
                // with its reason, rather than abort the process as llama.cpp would.
                let token = token.unwrap_or_else(|| {
                    self.weights
                        .eog_tokens
                        .first()
                        .copied()
                        .unwrap_or(LlamaToken(0))
                });
                grammar.accept(token);
                chain.accept(token);
                token
            }
            Sampler::Greedy { ignore_eos } => {
                let eog: &[LlamaToken] = if *ignore_eos {
                    &self.weights.eog_tokens
                } else {
                    &[]
                };
                argmax(self.ctx.get_logits_ith(batch_index as i32), eog)
            }
        };
        let vocab = self.weights.model.vocab();
        Sampled {
            token: token.0,
            end_of_generation: vocab.is_eog(token),
            piece: vocab.token_to_piece(token, false, None),
        }
    }

    fn release(&mut self, seq: SeqId) {
        self.samplers.remove(&seq);
    }

    fn truncate(&mut self, seq: SeqId, len: usize) -> usize {
        match self.ctx.kv_cache_seq_rm(seq, Some(len as u32), None) {
            Ok(_) => len,
            Err(_) => {
                // A model whose memory cannot drop part of a sequence (a recurrent one):
                // start it over.
                let _ = self.ctx.kv_cache_seq_rm(seq, None, None);
                0
            }
        }
    }

    fn copy_prefix(&mut self, from: SeqId, to: SeqId, len: usize) -> usize {
        if self.copy == CopyMode::Stream {
            let _ = self.ctx.kv_cache_seq_cp(from, to, None, None);
            return self.truncate(to, len);
        }
        // Emptied first: restoring an empty state would leave `to` as it was.
        let _ = self.ctx.kv_cache_seq_rm(to, None, None);
        let copied = self
            .ctx
            .state_seq_get(from, LlamaStateSeqFlags::empty())
            .map_err(|e| e.to_string())
            .and_then(|state| {
                self.ctx
                    .state_seq_set(&state, to)
                    .map_err(|e| e.to_string())
            });
        if let Err(err) = copied {
            // llama.cpp empties `to` when it cannot restore; the prompt is then prefilled.
            tracing::warn!(from, to, error = %err, "cannot copy a cached prefix");
            let _ = self.ctx.kv_cache_seq_rm(to, None, None);
            return 0;
        }
        self.truncate(to, len)
    }

    fn set_adapters(&mut self, set: &ActiveSet) -> Result<(), EngineError> {
        if set.key == self.applied.key {
            return Ok(());
        }
        let raw = self.raw.ok_or_else(|| {
            EngineError::Load("the context's pointer is unknown: adapters cannot be applied".into())
        })?;
        let mut adapters = Vec::with_capacity(set.adapters.len());
        let mut scales = Vec::with_capacity(set.adapters.len());
        for (adapter, scale) in &set.adapters {
            let adapter = adapter
                .as_any()
                .downcast_ref::<LlamaAdapter>()
                .ok_or_else(|| EngineError::Load("an adapter of another engine".into()))?;
            adapters.push(adapter.ptr);
            scales.push(*scale);
        }
        let (adapters_ptr, scales_ptr) = match adapters.is_empty() {
            true => (std::ptr::null_mut(), std::ptr::null_mut()),
            false => (adapters.as_mut_ptr(), scales.as_mut_ptr()),
        };
        // SAFETY: `raw` is this session's context (checked in `raw_context`), used on its
        // engine thread only; the adapters were loaded for this context's model and `set`
        // holds them loaded, and `applied` keeps holding them for as long as the context
        // points to them.
        let rc = unsafe {
            llama_cpp_sys_2::llama_set_adapters_lora(raw, adapters_ptr, adapters.len(), scales_ptr)
        };
        if rc != 0 {
            return Err(EngineError::Decode(format!(
                "llama.cpp refused the adapters ({rc})"
            )));
        }
        self.applied = set.clone();
        self.reserve_pending = true;
        Ok(())
    }
}

/// A LoRA adapter loaded by llama.cpp for one model.
struct LlamaAdapter {
    ptr: *mut llama_cpp_sys_2::llama_adapter_lora,
    /// The adapter belongs to the model and must be freed before it.
    _weights: Arc<LlamaWeights>,
}

// SAFETY: an adapter's tensors are written once, at load, and only read by decode calls after;
// it is freed once (Drop), under the model's `loras` lock.
unsafe impl Send for LlamaAdapter {}
unsafe impl Sync for LlamaAdapter {}

impl LoadedAdapter for LlamaAdapter {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for LlamaAdapter {
    fn drop(&mut self) {
        // SAFETY: loaded by llama_adapter_lora_init and freed nowhere else; the model is
        // still alive (held by `_weights`), so the adapter leaves its model's list first,
        // under the lock that guards that list.
        let _list = self._weights.loras.lock().expect("adapter list lock");
        unsafe { llama_cpp_sys_2::llama_adapter_lora_free(self.ptr) }
    }
}

/// Puts a context on its own thread pool. Without one (the context's pointer or the CPU
/// module's pool unavailable) llama.cpp starts and joins its threads for every graph: correct,
/// slower, and said once here.
fn attach(ctx: Option<*mut llama_cpp_sys_2::llama_context>, pool: Option<&Lease>) {
    match (ctx, pool) {
        // SAFETY: the context is live, and the caller frees it before the pool.
        (Some(ctx), Some(pool)) => unsafe { pool.attach(ctx) },
        _ => {
            tracing::warn!("no thread pool for a llama.cpp context: each decode starts its threads")
        }
    }
}

/// Puts `ctx` on `pool`, for code outside the engine that runs llama.cpp directly (the
/// benchmarks' baselines); false when the context's pointer cannot be read.
///
/// # Safety
/// `ctx` is dropped before `pool`.
pub unsafe fn attach_thread_pool(ctx: &LlamaContext<'_>, model: &LlamaModel, pool: &Lease) -> bool {
    let Some(raw) = raw_context(ctx, raw_model(model)) else {
        return false;
    };
    // SAFETY: `raw` is `ctx`'s, dropped before `pool` per this function's contract.
    unsafe { pool.attach(raw) };
    true
}

/// The model's llama.cpp pointer. llama-cpp-2 keeps it private, but `LlamaModel` is
/// `repr(transparent)` over its private `Ptr`, which is `repr(transparent)` over a
/// `NonNull<llama_model>`: the wrapper's memory is that pointer.
pub(super) fn raw_model(model: &LlamaModel) -> *mut llama_cpp_sys_2::llama_model {
    // SAFETY: see above: reading the wrapper as the pointer it is made of.
    unsafe { *std::ptr::from_ref(model).cast::<*mut llama_cpp_sys_2::llama_model>() }
}

/// The context's llama.cpp pointer. llama-cpp-2 (0.1.160) keeps it private, and its only
/// adapter call, `lora_adapter_set`, applies a single adapter, where a set of several needs
/// `llama_set_adapters_lora` with all of them at once. `LlamaContext`'s `Debug` prints the
/// pointer (`LlamaContext { context: 0x… }`); it is read from there and accepted only if
/// llama.cpp says that context belongs to `model`, so a future version that prints something
/// else turns adapters off (with an error naming why) rather than passing a wrong pointer.
fn raw_context(
    ctx: &LlamaContext<'_>,
    model: *mut llama_cpp_sys_2::llama_model,
) -> Option<*mut llama_cpp_sys_2::llama_context> {
    let printed = format!("{ctx:?}");
    let hex = printed.split("context: 0x").nth(1)?;
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    let ptr = usize::from_str_radix(&hex, 16).ok()? as *mut llama_cpp_sys_2::llama_context;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is the value the context's Debug printed for its own pointer field.
    let owner = unsafe { llama_cpp_sys_2::llama_get_model(ptr) };
    (owner.cast_mut() == model).then_some(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_skips_excluded_tokens_and_prefers_the_lowest_id_on_ties() {
        let logits = [0.1, 3.0, 3.0, 9.0];
        assert_eq!(argmax(&logits, &[]), LlamaToken(3));
        assert_eq!(argmax(&logits, &[LlamaToken(3)]), LlamaToken(1));
    }
}
