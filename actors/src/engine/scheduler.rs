//! Continuous batching over one inference context, with a prefix cache over its KV streams.
//!
//! The context has one KV stream (llama.cpp sequence id) per slot, `0..slots`, plus
//! `cache_streams` more after them. Up to `slots` sequences run at once, each in a slot. Every
//! stream keeps the KV of the last sequence that was in it, with those tokens and the tenant
//! whose prompt they were: that is the prefix cache. A new sequence always takes the lowest
//! free slot (running sequences on consecutive ids are computed in one pass; see
//! [`Scheduler::place`]). If its prompt starts with tokens a stream of the same tenant holds
//! (a chat resending its history, a function's system prompt, a document asked many
//! questions), it reuses the longest such prefix and prefills only the rest:
//! - held by the slot itself: kept in place, the rest of the slot cut off;
//! - held by another stream, idle or running: copied into the slot;
//! - being prefilled by another sequence right now: the new sequence waits until that prefill
//!   has passed the shared prefix and copies it then, rather than computing it a second time.
//!
//! Before a slot's content is overwritten it moves to a cache stream if it is worth more than
//! the least recently used entry there (which is then evicted). A stream a waiting sequence
//! will copy from is never evicted, and a running sequence's stream is never touched. The
//! cache's memory is the streams' KV, allocated with the context and counted in the replica's
//! memory (`kv_cells` in llama.rs).
//!
//! Why streams and not a radix tree of shared cells: the context keeps one KV stream per
//! sequence (see llama.rs: sequences sharing cells in a unified cache change each other's
//! float sums, so batching would change greedy output), so cells cannot be shared between
//! entries, only copied (`CopyMode` in llama.rs: the cells the source uses, through
//! llama.cpp's sequence state, or the whole stream). A copy the engine cannot make leaves the
//! slot empty, and the sequence prefills its whole prompt. With a few dozen streams, finding
//! the longest common prefix by scanning them costs microseconds per admission; the index that
//! must scale is the pool's, across replicas (`model_pool::affinity`).
//!
//! Isolation: a stream is matched only against prompts of the tenant that filled it, so
//! neither `cached_prompt_tokens` nor timing can tell one tenant what another sent.
//!
//! LoRA adapters: llama.cpp applies adapters to a whole context, so one step runs the
//! sequences of one adapter set (the base model is the empty set). The scheduler stays on a
//! set for up to [`ADAPTER_QUANTUM_STEPS`] steps while others wait, then moves to the next set
//! that has work, in a fixed cyclic order, so that no set starves: with `k` sets busy, a
//! sequence waits at most `(k - 1) × quantum` steps between two of its tokens. The quantum
//! exists because changing a context's adapters makes llama.cpp reserve its compute graph
//! again (milliseconds), which a switch at every step would pay every step. A stream's cached
//! KV is matched only by sequences of the same set, since another set computes other KV.
//!
//! Each [`Scheduler::step`] builds one batch, in sequence-id order: one token for every
//! sequence that is decoding, and prompt tokens of sequences still prefilling (oldest first
//! within the step's token budget left after the decode tokens, see
//! [`Scheduler::prefill_budget`]), so that admitting prompts delays the running streams' next
//! token by a bounded amount. With nothing decoding the oldest prompt goes in whole, and a
//! prompt whose rest is a little over the budget is not split (see [`Scheduler::step`]). One
//! `decode` call runs the batch; every sequence whose logits were requested samples its next
//! token with its own sampler. New jobs join between steps; a sequence that finishes, is
//! cancelled (its caller left, its deadline passed, the replica is stopping) or fails frees its
//! slot at once, and its stream keeps what it computed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use genrt_functions::TenantId;

use super::adapters::{ActiveSet, AdapterCache, AdapterKey};
use super::text::TextState;
use super::{
    BatchItem, Completion, EngineError, EngineJob, PrefixCacheStats, SeqId, Session, TokenId,
};
use crate::FinishReason;

/// Common prefixes shorter than this are prefilled rather than copied: a copy moves every
/// cell its source uses, and a few tokens cost less to compute.
pub(crate) const MIN_PREFIX_TOKENS: usize = 16;
/// Prompt tokens a step takes while sequences decode, whatever the budget left after their
/// decode tokens, so that prompts still advance when every slot decodes.
const MIN_PREFILL_PER_STEP: usize = 8;
/// Steps one adapter set runs before another set that has work gets its turn. See the module
/// documentation; measured by `genrt-bench-models` (adapter switches cost a graph reserve).
pub const ADAPTER_QUANTUM_STEPS: usize = 8;

/// How the scheduler is set up for one context.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerConfig {
    /// Sequences that run at once.
    pub slots: usize,
    /// KV streams: the slots' and the cache's (at least `slots`).
    pub streams: usize,
    /// Reuse cached prefixes at all.
    pub prefix_cache: bool,
    /// Tokens one step holds while any sequence decodes (decode tokens first).
    pub step_tokens: usize,
}

struct Running {
    job: EngineJob,
    /// The adapters this sequence runs with, held loaded until it ends.
    set: ActiveSet,
    admitted: u64,
    prompt: Vec<TokenId>,
    /// Prompt tokens whose KV came from the cache.
    cached: usize,
    /// Waiting for the sequence in stream `.0` to have prefilled the `.1` tokens this prompt
    /// shares with it, to copy them.
    awaiting: Option<(usize, usize)>,
    /// Set once the prompt is in: the token to feed next.
    last_token: Option<TokenId>,
    generated: u32,
    text: TextState,
    started_at: Instant,
    prefill_done_at: Option<Instant>,
    first_token_at: Option<Instant>,
    /// Where this sequence's logits are in the current batch, and how many prompt tokens it
    /// put in it.
    batch_index: Option<usize>,
    batch_prompt: usize,
}

fn is_idle(r: &Running) -> bool {
    r.job.priority == crate::Priority::Idle
}

struct Stream {
    /// The tokens whose KV the stream holds, at positions `0..tokens.len()`: while a sequence
    /// runs in it, what that sequence has computed so far.
    tokens: Vec<TokenId>,
    /// Whose prompt they came from: only that tenant's prompts may reuse them.
    tenant: Option<TenantId>,
    /// The adapter set they were computed with: only sequences of that set may reuse them.
    adapters: AdapterKey,
    last_used: u64,
    running: Option<Running>,
}

impl Stream {
    fn is_idle(&self) -> bool {
        self.running.is_none()
    }
}

/// Where a new sequence runs and what it starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    /// The slot (a stream below `slots`).
    target: usize,
    reuse: Reuse,
    /// A cache stream to move the slot's current content to first.
    spill: Option<usize>,
}

/// Where a new sequence's prompt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    Nothing,
    /// The target stream already holds this many leading tokens.
    InPlace(usize),
    Copy {
        from: usize,
        len: usize,
    },
    Await {
        from: usize,
        len: usize,
    },
}

pub(crate) struct Scheduler {
    streams: Vec<Stream>,
    config: SchedulerConfig,
    clock: u64,
    batch: Vec<BatchItem>,
    stats: Arc<PrefixCacheStats>,
    /// The model's loaded adapters; `None` where the engine has none (a model that is never
    /// given adapters needs no cache).
    adapters: Option<Arc<AdapterCache>>,
    /// The set applied to the session now, and how many steps it has run since it was.
    current: ActiveSet,
    steps_on_current: usize,
}

impl Scheduler {
    pub(crate) fn new(
        config: SchedulerConfig,
        stats: Arc<PrefixCacheStats>,
        adapters: Option<Arc<AdapterCache>>,
    ) -> Self {
        let streams = config.streams.max(config.slots).max(1);
        Self {
            streams: (0..streams)
                .map(|_| Stream {
                    tokens: Vec::new(),
                    tenant: None,
                    adapters: AdapterKey::default(),
                    last_used: 0,
                    running: None,
                })
                .collect(),
            config,
            clock: 0,
            batch: Vec::new(),
            stats,
            adapters,
            current: ActiveSet::base(),
            steps_on_current: 0,
        }
    }

    /// With nothing running, goes back to the base model, so that the context no longer
    /// holds the adapters it last used and they can be unloaded when idle.
    pub(crate) fn park(&mut self, session: &mut dyn Session) {
        if !self.current.key.is_base() {
            self.current = ActiveSet::base();
            self.steps_on_current = 0;
            if let Err(err) = session.set_adapters(&self.current) {
                tracing::warn!(error = %err, "cannot remove the context's adapters");
            }
        }
        if let Some(cache) = &self.adapters {
            cache.sweep();
        }
    }

    pub(crate) fn active(&self) -> usize {
        self.streams.iter().filter(|s| !s.is_idle()).count()
    }

    pub(crate) fn free_slots(&self) -> usize {
        self.config.slots.max(1).saturating_sub(self.active())
    }

    /// Puts a job in a free slot. Returns how many jobs left the engine (1 when the job was
    /// answered at once, because it cannot run), so that the caller can report freed slots.
    pub(crate) fn admit(&mut self, session: &mut dyn Session, job: EngineJob) -> usize {
        if self.free_slots() == 0 {
            return reject(job, EngineError::Crashed("no free slot".into()));
        }
        let prompt = match session.tokenize(&job.request.prompt) {
            Ok(t) => t,
            Err(err) => return reject(job, err),
        };
        let n_ctx = session.n_ctx_per_seq();
        let max_tokens = job.request.params.max_tokens;
        if prompt.is_empty() || prompt.len() as u64 + u64::from(max_tokens) > u64::from(n_ctx) {
            let err = EngineError::PromptTooLong {
                prompt_tokens: prompt.len() as u32,
                max_tokens,
                n_ctx,
            };
            return reject(job, err);
        }
        let set = match (&self.adapters, job.request.adapters.is_empty()) {
            (_, true) => ActiveSet::base(),
            (Some(cache), false) => match cache.acquire(&job.request.adapters) {
                Ok(set) => set,
                Err(err) => return reject(job, err),
            },
            (None, false) => {
                let err = EngineError::Load("this model's engine has no LoRA adapters".into());
                return reject(job, err);
            }
        };
        let Placement {
            target,
            reuse,
            spill,
        } = self.place(
            &job.tenant,
            &set.key,
            &prompt,
            job.priority == crate::Priority::Idle,
        );
        tracing::trace!(
            slot = target,
            ?reuse,
            ?spill,
            prompt = prompt.len(),
            "admit"
        );
        let seq = target as SeqId;
        if let Err(err) = session.begin(seq, &job.request.params, &job.request.output) {
            return reject(job, err);
        }
        self.clock += 1;
        if let Some(to) = spill {
            // Asked for before the copy into the slot below, which overwrites the slot:
            // copies take effect in the order they are asked for.
            let len = self.streams[target].tokens.len();
            let kept = session.copy_prefix(seq, to as SeqId, len);
            if !self.streams[to].tokens.is_empty() {
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
            let (tokens, tenant, adapters, last_used) = {
                let from = &self.streams[target];
                (
                    from.tokens[..kept].to_vec(),
                    from.tenant.clone(),
                    from.adapters.clone(),
                    from.last_used,
                )
            };
            // A branch kept beside the slot that continues its prefix is worth least.
            let last_used = if matches!(reuse, Reuse::InPlace(_)) {
                0
            } else {
                last_used
            };
            let cache = &mut self.streams[to];
            (cache.tokens, cache.tenant, cache.adapters, cache.last_used) =
                (tokens, tenant, adapters, last_used);
        } else if !matches!(reuse, Reuse::InPlace(_)) && !self.streams[target].tokens.is_empty() {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let mut awaiting = None;
        let mut kept = match reuse {
            Reuse::InPlace(len) => len,
            Reuse::Copy { from, len } => {
                let copied = session.copy_prefix(from as SeqId, seq, len);
                let source = &mut self.streams[from];
                let tokens = source.tokens[..copied].to_vec();
                if source.is_idle() && copied > 0 {
                    // The slot now holds the same prefix and will extend it: the source is
                    // the first to go when room is needed.
                    source.last_used = 0;
                }
                self.streams[target].tokens = tokens;
                copied
            }
            Reuse::Await { from, len } => {
                awaiting = Some((from, len));
                0
            }
            Reuse::Nothing => 0,
        };
        let stream = &mut self.streams[target];
        if stream.tokens.len() > kept {
            kept = session.truncate(seq, kept);
            stream.tokens.truncate(kept);
        }
        stream.tenant = Some(job.tenant.clone());
        stream.adapters = set.key.clone();
        stream.last_used = self.clock;
        stream.running = Some(Running {
            job,
            set,
            admitted: self.clock,
            prompt,
            cached: kept,
            awaiting,
            last_token: None,
            generated: 0,
            text: TextState::default(),
            started_at: Instant::now(),
            prefill_done_at: None,
            first_token_at: None,
            batch_index: None,
            batch_prompt: 0,
        });
        0
    }

    /// Chooses the slot a new sequence of `tenant` runs in, what of `prompt` it reuses, and
    /// where the slot's own content is kept first, if anywhere.
    ///
    /// The slot is always the lowest free one: llama.cpp computes consecutive sequence ids in
    /// one pass and splits a batch at every gap (`split_equal`, sequential, with one KV stream
    /// per sequence), so that running sequences spread over the streams would cost a pass
    /// each. Cached KV elsewhere is copied into the slot rather than run where it lies.
    ///
    /// A sequence that is not idle never waits for an idle one's prefill (which waits for it
    /// in turn): it reuses only what the idle one has computed already.
    fn place(
        &self,
        tenant: &TenantId,
        adapters: &AdapterKey,
        prompt: &[TokenId],
        idle: bool,
    ) -> Placement {
        // An idle sequence takes the highest free slot, away from the others: a sequence left
        // out of a step between two that run would split the step into two passes.
        let target = match idle {
            true => (0..self.config.slots)
                .rev()
                .find(|&i| self.streams[i].is_idle())
                .expect("admit checked for a free slot"),
            false => self.slot_for(adapters),
        };
        // The last prompt token is always computed, for its logits.
        let limit = prompt.len() - 1;
        // (stream, common prefix, whether its KV is already there)
        let mut best: Option<(usize, usize, bool)> = None;
        if self.config.prefix_cache {
            for (i, s) in self.streams.iter().enumerate() {
                if s.tenant.as_ref() != Some(tenant) || &s.adapters != adapters {
                    continue;
                }
                let have = common_prefix(&s.tokens, prompt).min(limit);
                let (len, ready) = match &s.running {
                    Some(r)
                        if r.last_token.is_none()
                            && r.awaiting.is_none()
                            && (idle || !is_idle(r)) =>
                    {
                        let will = common_prefix(&r.prompt, prompt).min(limit);
                        if will > have {
                            (will, false)
                        } else {
                            (have, true)
                        }
                    }
                    _ => (have, true),
                };
                // Longer first; at equal length, KV already there, then the target itself
                // (no copy).
                let rank = (len, ready, i == target);
                if best.is_none_or(|(b, blen, bready)| rank > (blen, bready, b == target)) {
                    best = Some((i, len, ready));
                }
            }
        }
        let best = best.filter(|&(_, len, _)| len >= MIN_PREFIX_TOKENS);
        let reuse = match best {
            None => Reuse::Nothing,
            Some((i, len, _)) if i == target => Reuse::InPlace(len),
            Some((i, len, true)) => Reuse::Copy { from: i, len },
            Some((i, len, false)) => Reuse::Await { from: i, len },
        };
        // A slot about to be overwritten moves its content to the cache streams first, if it
        // is worth more than the least valuable entry there. A slot kept in place loses only
        // what lies beyond the reused prefix (in a chat, the tail of the previous answer; for
        // a shared document, another question): that branch is kept only in an empty stream.
        let content = &self.streams[target];
        let branch = match reuse {
            Reuse::InPlace(len) => content.tokens.len() >= len + MIN_PREFIX_TOKENS,
            _ => false,
        };
        let spill = (branch
            || !matches!(reuse, Reuse::InPlace(_)) && content.tokens.len() >= MIN_PREFIX_TOKENS)
            .then(|| self.victim(best.map(|(i, ..)| i)))
            .flatten()
            .filter(|&v| {
                let v = &self.streams[v];
                v.tokens.is_empty() || !branch && v.last_used < content.last_used
            });
        Placement {
            target,
            reuse,
            spill,
        }
    }

    /// The free slot a new sequence of adapter set `set` runs in. A step runs one set, and
    /// llama.cpp computes a batch's sequences in one pass only where their ids are
    /// consecutive, so each set's running sequences are kept in one run of slots:
    /// - next to a run of its own set when a slot there is free, on the side with more free
    ///   slots beyond it (ties: after the run), so that the run grows into room of its own
    ///   rather than towards another set;
    /// - with no other set running, the lowest free slot (everything then stays in one run
    ///   from 0, whatever the arrival order);
    /// - otherwise in the middle of the longest run of free slots: room on both sides, for
    ///   this set and for the one before it.
    ///
    /// Sets arriving in turn (a, b, c, d, a, b, ...) into 16 slots end up in four runs of four.
    fn slot_for(&self, set: &AdapterKey) -> usize {
        let slots = self.config.slots;
        let free = |i: usize| self.streams[i].is_idle();
        // Idle sequences sit at the top (see `place`) and never decode with the others: no
        // one's neighbour.
        let set_of = |i: usize| {
            self.streams[i]
                .running
                .as_ref()
                .filter(|r| !is_idle(r))
                .map(|r| &r.set.key)
        };
        // The free run around slot `i`: how many free slots from `i` on in direction `step`.
        let room = |i: usize, right: bool| {
            let mut n = 0;
            let mut j = i as isize;
            while j >= 0 && (j as usize) < slots && free(j as usize) {
                n += 1;
                j += if right { 1 } else { -1 };
            }
            n
        };
        let mut beside_own: Option<(usize, bool, usize)> = None; // (room, right side, slot)
        for i in 0..slots {
            if !free(i) {
                continue;
            }
            let after_own = i > 0 && set_of(i - 1) == Some(set);
            let before_own = i + 1 < slots && set_of(i + 1) == Some(set);
            for (own, right) in [(after_own, true), (before_own, false)] {
                if own {
                    let candidate = (room(i, right), right, i);
                    if beside_own.is_none_or(|b| (candidate.0, candidate.1) > (b.0, b.1)) {
                        beside_own = Some(candidate);
                    }
                }
            }
        }
        if let Some((_, _, i)) = beside_own {
            return i;
        }
        let others = (0..slots).any(|i| set_of(i).is_some_and(|k| k != set));
        if !others {
            return (0..slots)
                .find(|&i| free(i))
                .expect("admit checked for a free slot");
        }
        let (mut best, mut run_start, mut best_len) = (None, 0, 0);
        for i in 0..=slots {
            if i < slots && free(i) {
                continue;
            }
            let len = i - run_start;
            if len > best_len {
                (best, best_len) = (Some(run_start + len / 2), len);
            }
            run_start = i + 1;
        }
        best.expect("admit checked for a free slot")
    }

    /// The cache stream whose content is worth least (empty, else least recently used), other
    /// than `except`, and not one a waiting sequence will copy from.
    fn victim(&self, except: Option<usize>) -> Option<usize> {
        let awaited: Vec<usize> = self
            .running()
            .filter_map(|r| r.awaiting.map(|(from, _)| from))
            .collect();
        (self.config.slots..self.streams.len())
            .filter(|&i| Some(i) != except && !awaited.contains(&i))
            .min_by_key(|&i| {
                (
                    !self.streams[i].tokens.is_empty(),
                    self.streams[i].last_used,
                )
            })
    }

    fn running(&self) -> impl Iterator<Item = &Running> {
        self.streams.iter().filter_map(|s| s.running.as_ref())
    }

    /// Prompt tokens this step may take beside `decoding` decode tokens: what is left of the
    /// step budget, at least [`MIN_PREFILL_PER_STEP`], within the batch. (When nothing
    /// decodes, [`Scheduler::step`] also takes the oldest prompt whole.)
    fn prefill_budget(&self, decoding: usize, n_batch: usize) -> usize {
        self.config
            .step_tokens
            .saturating_sub(decoding)
            .max(MIN_PREFILL_PER_STEP)
            .min(n_batch.saturating_sub(decoding))
    }

    /// Sequences waiting for another's prefill copy it once it is there, or give up waiting
    /// when it will not be.
    fn resolve_waits(&mut self, session: &mut dyn Session) {
        for i in 0..self.streams.len() {
            let Some((from, len)) = self.streams[i].running.as_ref().and_then(|r| r.awaiting)
            else {
                continue;
            };
            let source = &self.streams[from];
            let prompt = &self.streams[i].running.as_ref().expect("running").prompt;
            let same = source.tenant == self.streams[i].tenant
                && source.adapters == self.streams[i].adapters
                && source.tokens.len() >= len
                && source.tokens[..len] == prompt[..len];
            let waiter_idle = self.streams[i].running.as_ref().is_some_and(is_idle);
            let still_coming = source.running.as_ref().is_some_and(|r| {
                r.last_token.is_none()
                    && r.awaiting.is_none()
                    && common_prefix(&r.prompt, prompt) >= len
                    // An idle source does not run while this one waits for it.
                    && (waiter_idle || !is_idle(r))
            });
            if same {
                let copied = session.copy_prefix(from as SeqId, i as SeqId, len);
                let tokens = self.streams[from].tokens[..copied].to_vec();
                let stream = &mut self.streams[i];
                stream.tokens = tokens;
                let r = stream.running.as_mut().expect("running");
                r.awaiting = None;
                r.cached = copied;
            } else if !still_coming {
                let r = self.streams[i].running.as_mut().expect("running");
                r.awaiting = None;
            }
        }
    }

    /// Runs one decode step. Returns how many jobs left the engine.
    pub(crate) fn step(&mut self, session: &mut dyn Session, stopping: bool) -> usize {
        let now = Instant::now();
        let mut left = 0;
        for i in 0..self.streams.len() {
            let Some(r) = &self.streams[i].running else {
                continue;
            };
            let reason = if stopping || r.job.caller_gone() {
                Some(EngineError::Cancelled)
            } else if now >= r.job.request.deadline {
                Some(EngineError::DeadlineExceeded)
            } else {
                None
            };
            if let Some(err) = reason {
                left += self.finish(session, i, Err(err));
            }
        }
        self.resolve_waits(session);
        // Idle work (a shadow copy) takes part only in steps no other sequence needs: it
        // never makes another's step longer. It keeps its slot and KV while it waits.
        let others = self.running().any(|r| !is_idle(r));
        if others && self.free_slots() == 0 {
            // Every slot is taken while others run: a paused idle sequence gives its slot up,
            // since someone may wait for it in the pool (which sends a job only to a free
            // slot). A shadow is best-effort; a caller is not.
            let paused: Vec<usize> = (0..self.streams.len())
                .filter(|&i| self.streams[i].running.as_ref().is_some_and(is_idle))
                .collect();
            for i in paused {
                left += self.finish(session, i, Err(EngineError::Overloaded { queued: 0 }));
            }
        }
        let Some(turn) = self.choose_set(others) else {
            return left;
        };
        if turn != self.current.key {
            let set = self
                .running()
                .find(|r| r.set.key == turn)
                .map(|r| r.set.clone())
                .expect("a running sequence has the chosen set");
            if let Err(err) = session.set_adapters(&set) {
                tracing::error!(error = %err, "cannot apply adapters");
                return left + self.fail_set(session, &turn, err);
            }
            self.current = set;
            self.steps_on_current = 0;
        }
        self.steps_on_current += 1;

        // How many prompt tokens each prefilling sequence of this turn's set puts in: oldest
        // first, within the budget left by the decoding ones.
        // - When nothing decodes, the oldest prompt goes in whole (up to the batch): no stream
        //   waits on this step. The others still wait for the budget, so that prompts arriving
        //   together start one after another rather than all at the end of one long step: on
        //   a compute-bound CPU a step costs about its tokens, so the first answer starts
        //   after its own prompt instead of after all of them, and the last only a few decode
        //   tokens and step overheads later. (On a GPU a step's cost hardly grows with its
        //   tokens: give such a model a `step_tokens` of hundreds.)
        // - A prompt whose rest exceeds what is left by at most half the allowance is taken
        //   whole rather than split: its tail would otherwise cost it one more whole step
        //   before its first token (a chat's new turn, a few dozen tokens, is the usual
        //   case), while the step grows by at most half its prompt allowance.
        // Measured by `genrt-bench-cache` (CACHE.md): TTFT of concurrent conversations, and
        // ITL p99/p50 of 16 streams with prompts arriving.
        let decoding = self
            .running()
            .filter(|r| r.last_token.is_some() && r.set.key == turn && !(others && is_idle(r)))
            .count();
        let allowance = self.prefill_budget(decoding, session.n_batch());
        let mut budget = allowance;
        let mut room = session.n_batch().saturating_sub(decoding);
        let mut prefilling: Vec<(u64, usize)> = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let r = s.running.as_ref()?;
                let runs = r.set.key == turn && !(others && is_idle(r));
                (r.last_token.is_none() && r.awaiting.is_none() && runs).then_some((r.admitted, i))
            })
            .collect();
        prefilling.sort_unstable();
        for s in &mut self.streams {
            if let Some(r) = &mut s.running {
                r.batch_prompt = 0;
            }
        }
        for (n, (_, i)) in prefilling.into_iter().enumerate() {
            let s = &mut self.streams[i];
            let n_past = s.tokens.len();
            let r = s.running.as_mut().expect("running");
            let rest = r.prompt.len() - n_past;
            // An idle sequence's prompt always goes in chunks within the budget: a step in
            // flight when a caller's sequence arrives is one the caller waits for.
            let whole = !is_idle(r)
                && (decoding == 0 && n == 0 || budget > 0 && rest <= budget + allowance / 2);
            r.batch_prompt = if whole { rest } else { rest.min(budget) }.min(room);
            budget = budget.saturating_sub(r.batch_prompt);
            room -= r.batch_prompt;
        }
        // The batch in sequence-id order: llama.cpp groups a batch into passes by runs of
        // consecutive ids in the order it meets them.
        self.batch.clear();
        for (i, s) in self.streams.iter_mut().enumerate() {
            let n_past = s.tokens.len();
            let Some(r) = &mut s.running else { continue };
            r.batch_index = None;
            if r.set.key != turn || others && is_idle(r) {
                r.batch_prompt = 0;
                continue;
            }
            if let Some(token) = r.last_token {
                r.batch_prompt = 0;
                r.batch_index = Some(self.batch.len());
                self.batch.push(BatchItem {
                    token,
                    pos: n_past as i32,
                    seq: i as SeqId,
                    logits: true,
                });
                continue;
            }
            for pos in n_past..n_past + r.batch_prompt {
                let last = pos == r.prompt.len() - 1;
                if last {
                    r.batch_index = Some(self.batch.len());
                }
                self.batch.push(BatchItem {
                    token: r.prompt[pos],
                    pos: pos as i32,
                    seq: i as SeqId,
                    logits: last,
                });
            }
        }
        if self.batch.is_empty() {
            return left;
        }

        let decode_started = Instant::now();
        if let Err(err) = session.decode(&self.batch) {
            tracing::error!(error = %err, batch = self.batch.len(), "decode failed");
            return left + self.fail_all(session, err);
        }
        // At trace level only: what each step held and took, to see where latency goes.
        tracing::trace!(
            decoding,
            tokens = self.batch.len(),
            ms = decode_started.elapsed().as_secs_f64() * 1000.0,
            "step"
        );

        let now = Instant::now();
        for i in 0..self.streams.len() {
            let s = &mut self.streams[i];
            let Some(r) = s.running.as_mut() else {
                continue;
            };
            if r.batch_prompt > 0 {
                let n_past = s.tokens.len();
                s.tokens
                    .extend_from_slice(&r.prompt[n_past..n_past + r.batch_prompt]);
            } else if let (Some(token), Some(_)) = (r.last_token, r.batch_index) {
                s.tokens.push(token);
            }
            let Some(index) = r.batch_index else { continue };
            if r.prefill_done_at.is_none() {
                r.prefill_done_at = Some(now);
            }
            // Injected while the sequence is running, as a real engine fault would be, so that
            // the panic path answers every running job. Only a server started with
            // `server.fault_injection` (tests, on loopback) lets a request carry a fault.
            match r.job.request.fault {
                Some(crate::Fault::EnginePanic) => panic!("injected engine panic"),
                // Stuck like a call that never returns, with no stop flag checked: only the
                // watchdog's answering the job (which closes its reply) ends it, so that a
                // test's thread does not outlive the test.
                Some(crate::Fault::EngineHang) => {
                    while !r.job.caller_gone() {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                None => {}
            }
            let sampled = session.sample(i as SeqId, index);
            r.first_token_at.get_or_insert(now);
            if sampled.end_of_generation {
                left += self.finish(session, i, Ok(FinishReason::Stop));
                continue;
            }
            r.generated += 1;
            let delta = r.text.push(&sampled.piece, &r.job.request.params.stop);
            if !delta.text.is_empty() {
                if let Some(stream) = &r.job.stream {
                    // Capacity exceeds max_tokens, so this never finds the channel full; a
                    // closed channel is noticed by the cancellation check of the next step.
                    let _ = stream.try_send(delta.text);
                }
            }
            if delta.stopped {
                left += self.finish(session, i, Ok(FinishReason::StopSequence));
            } else if r.generated >= r.job.request.params.max_tokens {
                left += self.finish(session, i, Ok(FinishReason::Length));
            } else {
                r.last_token = Some(sampled.token);
            }
        }
        left
    }

    /// The adapter set whose sequences run this step: the current one for up to
    /// [`ADAPTER_QUANTUM_STEPS`] steps, or alone; otherwise the next set with work after it,
    /// in key order, wrapping around. `None` when no sequence can run. With `others` (a
    /// sequence that is not idle runs), idle sequences give no set a turn.
    fn choose_set(&self, others: bool) -> Option<AdapterKey> {
        let mut sets: Vec<&AdapterKey> = self
            .running()
            .filter(|r| r.awaiting.is_none() && !(others && is_idle(r)))
            .map(|r| &r.set.key)
            .collect();
        sets.sort_unstable();
        sets.dedup();
        let current = &self.current.key;
        let has_current = sets.contains(&current);
        if has_current && (sets.len() == 1 || self.steps_on_current < ADAPTER_QUANTUM_STEPS) {
            return Some(current.clone());
        }
        sets.iter()
            .find(|k| **k > current)
            .or_else(|| sets.first())
            .map(|k| (*k).clone())
    }

    /// Answers every sequence of adapter set `key` with `err` (its adapters could not be
    /// applied). Returns how many left.
    fn fail_set(&mut self, session: &mut dyn Session, key: &AdapterKey, err: EngineError) -> usize {
        (0..self.streams.len())
            .filter(|&i| {
                self.streams[i]
                    .running
                    .as_ref()
                    .is_some_and(|r| &r.set.key == key)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|i| self.finish(session, i, Err(err.clone())))
            .sum()
    }

    /// Ends the sequence in stream `i` and answers its job; the stream keeps the KV computed
    /// so far for later prompts. Returns 1.
    fn finish(
        &mut self,
        session: &mut dyn Session,
        i: usize,
        outcome: Result<FinishReason, EngineError>,
    ) -> usize {
        let stream = &mut self.streams[i];
        let Some(mut r) = stream.running.take() else {
            return 0;
        };
        session.release(i as SeqId);
        if let Some(cache) = &self.adapters {
            cache.release(std::mem::replace(&mut r.set, ActiveSet::base()));
        }
        // Recency by finishing order: what finished last is evicted last.
        self.clock += 1;
        stream.last_used = self.clock;
        if self.config.prefix_cache {
            let s = &self.stats;
            s.lookups.fetch_add(1, Ordering::Relaxed);
            s.hits.fetch_add(u64::from(r.cached > 0), Ordering::Relaxed);
            s.prompt_tokens
                .fetch_add(r.prompt.len() as u64, Ordering::Relaxed);
            s.cached_tokens
                .fetch_add(r.cached as u64, Ordering::Relaxed);
        } else {
            session.truncate(i as SeqId, 0);
            stream.tokens.clear();
        }
        let result = outcome.map(|finish_reason| {
            if finish_reason != FinishReason::StopSequence {
                let rest = r.text.remainder();
                if let (false, Some(stream)) = (rest.is_empty(), &r.job.stream) {
                    let _ = stream.try_send(rest);
                }
            }
            Completion {
                text: r.text.finish(),
                prompt_tokens: r.prompt.len() as u32,
                cached_prompt_tokens: r.cached as u32,
                completion_tokens: r.generated,
                finish_reason,
                started_at: r.started_at,
                prefill_done_at: r.prefill_done_at,
                first_token_at: r.first_token_at,
                load_wait: r.job.load_wait,
            }
        });
        let _ = r.job.reply.send(result);
        1
    }

    /// Answers every running job with `err` (after a failed decode, or a panic) and forgets
    /// every cached prefix, since the KV may be half-written. Returns how many left.
    pub(crate) fn fail_all(&mut self, session: &mut dyn Session, err: EngineError) -> usize {
        let left = (0..self.streams.len())
            .map(|i| self.finish(session, i, Err(err.clone())))
            .sum();
        for (i, s) in self.streams.iter_mut().enumerate() {
            session.truncate(i as SeqId, 0);
            s.tokens.clear();
            s.tenant = None;
            s.adapters = AdapterKey::default();
        }
        left
    }
}

fn reject(job: EngineJob, err: EngineError) -> usize {
    let _ = job.reply.send(Err(err));
    1
}

/// How many leading elements `a` and `b` share.
pub(crate) fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use genrt_functions::{GenerationParams, OutputSpec, RenderedPrompt, TenantId};
    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::fake::FakeSession;
    use crate::engine::{stream_channel, EngineRequest};

    type Reply = oneshot::Receiver<Result<Completion, EngineError>>;

    fn job_of(
        tenant: &str,
        system: Option<&str>,
        user: &str,
        max_tokens: u32,
    ) -> (EngineJob, Reply) {
        let (reply, rx) = oneshot::channel();
        let params = GenerationParams {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ..Default::default()
        };
        let job = EngineJob {
            request: EngineRequest {
                prompt: RenderedPrompt {
                    system: system.map(str::to_owned),
                    user: user.to_owned(),
                    ..RenderedPrompt::default()
                },
                params: params.resolve(&GenerationParams::default()),
                output: OutputSpec::Text,
                adapters: Default::default(),
                deadline: Instant::now() + Duration::from_secs(30),
                fault: None,
            },
            tenant: TenantId::parse(tenant).unwrap(),
            enqueued_at: Instant::now(),
            load_wait: Duration::ZERO,
            priority: crate::Priority::Interactive,
            stream: None,
            reply,
        };
        (job, rx)
    }

    fn job(system: Option<&str>, user: &str, max_tokens: u32) -> (EngineJob, Reply) {
        job_of("acme", system, user, max_tokens)
    }

    fn scheduler(slots: usize, streams: usize, step_tokens: usize) -> Scheduler {
        let config = SchedulerConfig {
            slots,
            streams,
            prefix_cache: true,
            step_tokens,
        };
        Scheduler::new(config, Arc::default(), None)
    }

    fn run_until_idle(s: &mut Scheduler, session: &mut FakeSession) -> usize {
        let mut left = 0;
        for _ in 0..10_000 {
            if s.active() == 0 {
                return left;
            }
            left += s.step(session, false);
        }
        panic!("scheduler did not finish");
    }

    /// Runs one job to its end and returns its completion.
    fn run_one(
        s: &mut Scheduler,
        session: &mut FakeSession,
        (job, mut rx): (EngineJob, Reply),
    ) -> Completion {
        assert_eq!(s.admit(session, job), 0);
        run_until_idle(s, session);
        rx.try_recv().unwrap().unwrap()
    }

    const SYSTEM: &str = "You are a careful assistant who follows the house style.";

    #[test]
    fn idle_work_decodes_only_in_steps_nobody_else_needs() {
        let mut session = FakeSession::new(4, 4096, 512);
        let mut s = scheduler(4, 4, 32);
        let (mut shadow, mut shadow_reply) = job(None, "a shadow copy", 30);
        shadow.priority = crate::Priority::Idle;
        assert_eq!(s.admit(&mut session, shadow), 0);
        // Alone, it runs: its prompt goes in.
        s.step(&mut session, false);
        assert_eq!(session.last_batch_seqs.len(), 1);
        let shadow_seq = session.last_batch_seqs[0];
        let (a, mut a_reply) = job(None, "an interactive call", 5);
        assert_eq!(s.admit(&mut session, a), 0);
        // While the interactive sequence runs, no batch holds the shadow's.
        let mut steps = 0;
        while a_reply.try_recv().is_err() {
            s.step(&mut session, false);
            assert!(
                !session.last_batch_seqs.contains(&shadow_seq),
                "step {steps}"
            );
            assert_eq!(session.last_batch_seqs.len(), 1);
            steps += 1;
            assert!(steps < 100, "the interactive call never ended");
        }
        // Then the shadow goes on to its end, its text whole.
        run_until_idle(&mut s, &mut session);
        let done = shadow_reply.try_recv().unwrap().unwrap();
        assert_eq!(done.text, "echo: a shadow copy");
    }

    #[test]
    fn a_paused_idle_sequence_gives_its_slot_up_when_every_slot_is_taken() {
        let mut session = FakeSession::new(2, 4096, 512);
        let mut s = scheduler(2, 2, 32);
        let (mut shadow, mut shadow_reply) = job(None, "a shadow copy", 30);
        shadow.priority = crate::Priority::Idle;
        assert_eq!(s.admit(&mut session, shadow), 0);
        s.step(&mut session, false);
        let (a, mut a_reply) = job(None, "an interactive call", 5);
        assert_eq!(s.admit(&mut session, a), 0);
        assert_eq!(s.free_slots(), 0);
        // The next step ends the shadow (overloaded) and frees its slot.
        assert_eq!(s.step(&mut session, false), 1);
        assert_eq!(s.free_slots(), 1);
        assert!(matches!(
            shadow_reply.try_recv().unwrap(),
            Err(EngineError::Overloaded { .. })
        ));
        run_until_idle(&mut s, &mut session);
        assert!(a_reply.try_recv().unwrap().is_ok());
    }

    #[test]
    fn sequences_share_decode_steps_and_each_gets_its_own_text() {
        let mut session = FakeSession::new(4, 256, 64);
        let mut s = scheduler(4, 4, 32);
        let (a, mut ra) = job(None, "alpha", 100);
        let (b, mut rb) = job(None, "bravo charlie", 100);
        assert_eq!(s.admit(&mut session, a), 0);
        assert_eq!(s.admit(&mut session, b), 0);
        assert_eq!(run_until_idle(&mut s, &mut session), 2);
        assert_eq!(ra.try_recv().unwrap().unwrap().text, "echo: alpha");
        assert_eq!(rb.try_recv().unwrap().unwrap().text, "echo: bravo charlie");
        // Both decoded in the same steps: some batch held a token of each.
        assert!(session.max_sequences_in_one_batch >= 2);
    }

    /// Three slots, two of them decoding (two short prompts, one step in), step budget
    /// `step_tokens`; the replies are kept so that the two go on.
    fn two_decoding(step_tokens: usize) -> (Scheduler, FakeSession, [Reply; 2]) {
        let mut session = FakeSession::new(3, 4096, 512);
        let mut s = scheduler(3, 3, step_tokens);
        let (a, ra) = job(None, "hi", 200);
        let (b, rb) = job(None, "yo", 200);
        s.admit(&mut session, a);
        s.admit(&mut session, b);
        s.step(&mut session, false); // both prompts at once: nothing decodes yet
        (s, session, [ra, rb])
    }

    #[test]
    fn a_step_holds_decode_tokens_first_then_prompt_tokens_up_to_the_budget() {
        let (mut s, mut session, _replies) = two_decoding(16);
        let (long, _r) = job(None, &"x".repeat(400), 10);
        s.admit(&mut session, long);
        s.step(&mut session, false);
        // Two decode tokens, then 14 prompt tokens: 16 in all.
        assert_eq!(session.last_batch_len, 16);
        // However many decode, prompts still advance.
        let (mut s, mut session, _replies) = two_decoding(2);
        let (long, _r) = job(None, &"x".repeat(400), 10);
        s.admit(&mut session, long);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 2 + MIN_PREFILL_PER_STEP);
    }

    #[test]
    fn a_prompt_whose_rest_fits_one_and_a_half_allowances_is_taken_whole() {
        let (mut s, mut session, _replies) = two_decoding(16);
        // Two decode, so 14 prompt tokens a step; a 21-token prompt goes in at once.
        let (turn, _r) = job(None, &"x".repeat(19), 10);
        s.admit(&mut session, turn);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 2 + 21);
        // A longer one is split at the allowance until its rest fits: 35 = 14 + 21.
        let (mut s, mut session, _replies) = two_decoding(16);
        let (long, _r) = job(None, &"x".repeat(33), 10);
        s.admit(&mut session, long);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 2 + 14);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 2 + 21);
    }

    #[test]
    fn prompts_arriving_together_start_one_after_another_and_a_lone_one_goes_in_whole() {
        let mut session = FakeSession::new(3, 4096, 512);
        let mut s = scheduler(3, 3, 16);
        let mut replies = Vec::new();
        for name in ["a", "b", "c"] {
            let (j, r) = job(None, &name.repeat(18), 100);
            s.admit(&mut session, j);
            replies.push(r);
        }
        // The oldest whole (20 tokens); then each step one more, beside those decoding.
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 20);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 1 + 20);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 2 + 20);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 3);
        // Alone, a long prompt is not held to the budget.
        let mut session = FakeSession::new(3, 4096, 512);
        let mut s = scheduler(3, 3, 16);
        let (long, _r) = job(None, &"x".repeat(400), 10);
        s.admit(&mut session, long);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_len, 402);
    }

    #[test]
    fn max_tokens_stops_with_length_and_a_gone_caller_frees_the_slot() {
        let mut session = FakeSession::new(2, 256, 64);
        let mut s = scheduler(2, 2, 32);
        let done = run_one(&mut s, &mut session, job(None, "a long enough text", 3));
        assert_eq!(done.finish_reason, FinishReason::Length);
        assert_eq!(done.completion_tokens, 3);

        let (mut b, rb) = job(None, "never read", 100);
        let (tx, rx) = stream_channel(100);
        b.stream = Some(tx);
        s.admit(&mut session, b);
        s.step(&mut session, false);
        drop(rx);
        drop(rb);
        assert_eq!(s.step(&mut session, false), 1, "the cancelled job left");
        assert_eq!(s.free_slots(), 2);
    }

    #[test]
    fn deadline_and_context_limits_are_enforced() {
        let mut session = FakeSession::new(1, 32, 64);
        let mut s = scheduler(1, 1, 32);
        let (too_long, mut r) = job(None, &"y".repeat(40), 4);
        assert_eq!(s.admit(&mut session, too_long), 1);
        assert!(matches!(
            r.try_recv().unwrap(),
            Err(EngineError::PromptTooLong { .. })
        ));

        let (mut late, mut r) = job(None, "z", 10);
        late.request.deadline = Instant::now();
        s.admit(&mut session, late);
        s.step(&mut session, false);
        assert_eq!(r.try_recv().unwrap(), Err(EngineError::DeadlineExceeded));
    }

    #[test]
    fn a_shared_system_prompt_is_prefilled_once() {
        let mut session = FakeSession::new(2, 512, 512);
        let mut s = scheduler(2, 2, 64);
        let first = run_one(&mut s, &mut session, job(Some(SYSTEM), "first", 50));
        assert_eq!(first.cached_prompt_tokens, 0);
        let prefilled = session.prompt_tokens_decoded;
        let second = run_one(&mut s, &mut session, job(Some(SYSTEM), "second", 50));
        assert_eq!(second.text, "echo: second");
        // The system prompt and its separator.
        assert_eq!(second.cached_prompt_tokens as usize, SYSTEM.len() + 1);
        assert_eq!(
            session.prompt_tokens_decoded - prefilled,
            second.prompt_tokens as usize - SYSTEM.len() - 1
        );
    }

    #[test]
    fn a_conversation_resending_its_history_prefills_only_the_new_turn() {
        let mut session = FakeSession::new(2, 4096, 512);
        let mut s = scheduler(2, 4, 64);
        // The fake echoes the user text; a conversation is the user text growing by a turn.
        let mut history = String::from("turn 0: tell me about the weather in the mountains");
        let first = run_one(&mut s, &mut session, job(None, &history, 1000));
        assert_eq!(first.cached_prompt_tokens, 0);
        for turn in 1..20 {
            history.push_str(&format!(" | turn {turn}: and then?"));
            let done = run_one(&mut s, &mut session, job(None, &history, 1000));
            assert_eq!(done.text, format!("echo: {history}"), "turn {turn}");
            // Everything before this turn's text was cached.
            let new = format!(" | turn {turn}: and then?").len() + 1;
            assert_eq!(
                done.cached_prompt_tokens as usize,
                done.prompt_tokens as usize - new,
                "turn {turn}"
            );
        }
    }

    #[test]
    fn another_tenant_never_reuses_a_prefix_and_keeps_its_own() {
        let mut session = FakeSession::new(2, 512, 512);
        let mut s = scheduler(2, 4, 64);
        run_one(&mut s, &mut session, job_of("acme", Some(SYSTEM), "a", 50));
        let other = run_one(
            &mut s,
            &mut session,
            job_of("globex", Some(SYSTEM), "a", 50),
        );
        assert_eq!(other.cached_prompt_tokens, 0, "the key includes the tenant");
        assert_eq!(other.text, "echo: a");
        // Each tenant's own prefix is still there for that tenant.
        let again = run_one(&mut s, &mut session, job_of("acme", Some(SYSTEM), "b", 50));
        assert_eq!(again.cached_prompt_tokens as usize, SYSTEM.len() + 1);
        let again = run_one(
            &mut s,
            &mut session,
            job_of("globex", Some(SYSTEM), "b", 50),
        );
        assert_eq!(again.cached_prompt_tokens as usize, SYSTEM.len() + 1);
    }

    #[test]
    fn sequences_admitted_together_prefill_a_shared_prefix_once() {
        let mut session = FakeSession::new(4, 512, 512);
        let mut s = scheduler(4, 4, 512);
        let mut replies = Vec::new();
        for user in ["one", "two", "three", "four"] {
            let (j, r) = job(Some(SYSTEM), user, 30);
            s.admit(&mut session, j);
            replies.push((user, r));
        }
        run_until_idle(&mut s, &mut session);
        for (i, (user, mut r)) in replies.into_iter().enumerate() {
            let done = r.try_recv().unwrap().unwrap();
            assert_eq!(done.text, format!("echo: {user}"));
            let expected = if i == 0 { 0 } else { SYSTEM.len() + 1 };
            assert_eq!(done.cached_prompt_tokens as usize, expected, "{user}");
        }
        let users = "one".len() + "two".len() + "three".len() + "four".len();
        assert_eq!(
            session.prompt_tokens_decoded,
            SYSTEM.len() + 1 + users + 4,
            "the system prompt was computed once, each user text and end once"
        );
        assert_eq!(session.copies, 3);
    }

    /// Runs `a` (a long user text after SYSTEM) for two steps, then `b` ("short", same system
    /// prompt), which copies `a`'s prefix; `refuse`: the engine refuses the copy. Returns
    /// `b`'s completion and the prompt tokens computed from `b`'s admission on.
    fn copy_from_a_running_sequence(refuse: bool) -> (Scheduler, FakeSession, Completion, usize) {
        let mut session = FakeSession::new(2, 512, 512);
        session.refuse_reuse = refuse;
        let mut s = scheduler(2, 2, 64);
        let (a, mut ra) = job(Some(SYSTEM), "long running answer here", 100);
        s.admit(&mut session, a);
        s.step(&mut session, false);
        s.step(&mut session, false);
        let decoded = session.prompt_tokens_decoded;
        let (b, mut rb) = job(Some(SYSTEM), "short", 100);
        s.admit(&mut session, b);
        run_until_idle(&mut s, &mut session);
        assert_eq!(
            ra.try_recv().unwrap().unwrap().text,
            "echo: long running answer here"
        );
        let b = rb.try_recv().unwrap().unwrap();
        assert_eq!(b.text, "echo: short");
        assert_eq!(session.copies, 1);
        let computed = session.prompt_tokens_decoded - decoded;
        (s, session, b, computed)
    }

    #[test]
    fn a_running_sequence_shares_its_prefix_by_copy() {
        let (_, _, b, computed) = copy_from_a_running_sequence(false);
        assert_eq!(b.cached_prompt_tokens as usize, SYSTEM.len() + 1);
        assert_eq!(
            computed,
            (b.prompt_tokens - b.cached_prompt_tokens) as usize
        );
    }

    #[test]
    fn a_copy_the_engine_cannot_use_is_prefilled_and_reports_nothing_cached() {
        let (mut s, mut session, b, computed) = copy_from_a_running_sequence(true);
        assert_eq!(b.cached_prompt_tokens, 0);
        assert_eq!(computed, b.prompt_tokens as usize);
        // The next one shares most with b's stream (refilled by b's own prefill): it copies
        // from it, is refused too, prefills again and is right.
        let (c, mut rc) = job(Some(SYSTEM), "shorter", 100);
        s.admit(&mut session, c);
        run_until_idle(&mut s, &mut session);
        let c = rc.try_recv().unwrap().unwrap();
        assert_eq!(c.text, "echo: shorter");
        assert_eq!(c.cached_prompt_tokens, 0);
        assert_eq!(session.copies, 2);
    }

    #[test]
    fn the_least_recently_used_prefix_is_evicted_and_output_stays_right() {
        let mut session = FakeSession::new(1, 512, 512);
        let stats = Arc::new(PrefixCacheStats::default());
        let config = SchedulerConfig {
            slots: 1,
            streams: 2,
            prefix_cache: true,
            step_tokens: 64,
        };
        let mut s = Scheduler::new(config, Arc::clone(&stats), None);
        let systems: Vec<String> = (0..3)
            .map(|i| format!("{i}: a system prompt, long enough to be cached."))
            .collect();
        for system in &systems {
            run_one(&mut s, &mut session, job(Some(system), "q", 20));
        }
        // Two streams: the first system prompt was evicted, the last two are held.
        assert_eq!(stats.evictions.load(Ordering::Relaxed), 1);
        let done = run_one(&mut s, &mut session, job(Some(&systems[2]), "again", 20));
        assert_eq!(done.cached_prompt_tokens as usize, systems[2].len() + 1);
        let done = run_one(&mut s, &mut session, job(Some(&systems[0]), "again", 20));
        assert_eq!(done.cached_prompt_tokens, 0);
        assert_eq!(done.text, "echo: again");
        // That took the stream of systems[1], the least recently used.
        let done = run_one(&mut s, &mut session, job(Some(&systems[1]), "again", 20));
        assert_eq!(done.cached_prompt_tokens, 0);
        let done = run_one(&mut s, &mut session, job(Some(&systems[0]), "more", 20));
        assert_eq!(done.cached_prompt_tokens as usize, systems[0].len() + 1);
        assert_eq!(stats.lookups.load(Ordering::Relaxed), 7);
        assert_eq!(stats.hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_branch_keeps_the_longer_history_when_a_stream_is_free() {
        let mut session = FakeSession::new(1, 1024, 512);
        let mut s = scheduler(1, 2, 64);
        let conversation = "a question about the attached report and its findings";
        run_one(&mut s, &mut session, job(Some(SYSTEM), conversation, 100));
        // Another question on the same system prompt: copied into the empty stream, so the
        // first conversation's history stays whole.
        let other = run_one(&mut s, &mut session, job(Some(SYSTEM), "unrelated", 100));
        assert_eq!(other.cached_prompt_tokens as usize, SYSTEM.len() + 1);
        assert_eq!(session.copies, 1);
        let follow_up = format!("{conversation} and more");
        let done = run_one(&mut s, &mut session, job(Some(SYSTEM), &follow_up, 100));
        assert_eq!(
            done.cached_prompt_tokens as usize,
            SYSTEM.len() + 1 + conversation.len()
        );
    }

    #[test]
    fn a_new_sequence_takes_the_lowest_free_slot_so_that_running_ones_stay_together() {
        let mut session = FakeSession::new(3, 1024, 512);
        let mut s = scheduler(3, 5, 64);
        let (a, _ra) = job(None, "a long one that keeps going", 100);
        let (b, mut rb) = job(None, "b", 100);
        let (c, _rc) = job(None, "another long one that keeps going", 100);
        for j in [a, b, c] {
            s.admit(&mut session, j);
        }
        while rb.try_recv().is_err() {
            s.step(&mut session, false);
        }
        let (d, _rd) = job(None, "d comes later", 100);
        s.admit(&mut session, d);
        s.step(&mut session, false);
        assert_eq!(session.last_batch_seqs, vec![0, 1, 2], "d runs in b's slot");
    }

    #[test]
    fn concurrent_conversations_keep_their_histories_whatever_order_turns_arrive_in() {
        let mut session = FakeSession::new(4, 8192, 512);
        let mut s = scheduler(4, 6, 64);
        let mut histories: Vec<String> = (0..4)
            .map(|c| format!("conversation {c} begins with a question about the sea"))
            .collect();
        for turn in 0..12 {
            // Turns arrive in a different order each round, some while others still run.
            let order: Vec<usize> = match turn % 3 {
                0 => vec![0, 1, 2, 3],
                1 => vec![3, 1, 0, 2],
                _ => vec![2, 0, 3, 1],
            };
            let mut replies = Vec::new();
            for (n, &c) in order.iter().enumerate() {
                if turn > 0 {
                    histories[c].push_str(&format!(" | turn {turn}: go on"));
                }
                let (j, r) = job(None, &histories[c], 2000);
                s.admit(&mut session, j);
                replies.push((c, r));
                // Stagger: a few steps between arrivals.
                for _ in 0..n {
                    s.step(&mut session, false);
                }
            }
            run_until_idle(&mut s, &mut session);
            for (c, mut r) in replies {
                let done = r.try_recv().unwrap().unwrap();
                assert_eq!(done.text, format!("echo: {}", histories[c]));
                if turn > 0 {
                    let new = format!(" | turn {turn}: go on").len() + 1;
                    assert_eq!(
                        done.cached_prompt_tokens as usize,
                        done.prompt_tokens as usize - new,
                        "turn {turn}, conversation {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn with_the_cache_off_nothing_is_reused() {
        let mut session = FakeSession::new(1, 512, 512);
        let config = SchedulerConfig {
            slots: 1,
            streams: 1,
            prefix_cache: false,
            step_tokens: 64,
        };
        let mut s = Scheduler::new(config, Arc::default(), None);
        run_one(&mut s, &mut session, job(Some(SYSTEM), "a", 20));
        let done = run_one(&mut s, &mut session, job(Some(SYSTEM), "b", 20));
        assert_eq!(done.cached_prompt_tokens, 0);
        assert!(session.live_sequences().is_empty(), "nothing kept");
    }

    /// A scheduler whose model has fake adapters, and a folder with their (empty) files.
    fn with_adapters(slots: usize, streams: usize) -> (Scheduler, std::path::PathBuf) {
        use crate::engine::fake::FakeBackend;
        use crate::engine::{Backend, Placement};
        use crate::memory::{Budgets, MemoryBudget};
        let dir = std::env::temp_dir().join(format!(
            "genrt-sched-adapters-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["fashion", "sports", "tone", "broken"] {
            std::fs::write(dir.join(format!("{name}.gguf")), b"lora").unwrap();
        }
        let config = crate::ModelConfig::new("m", "/models/m.gguf");
        let weights = FakeBackend::default()
            .load(&config, &Placement::cpu())
            .unwrap();
        let cache = AdapterCache::new(
            weights,
            Budgets::host_only(MemoryBudget::new(1 << 30)),
            None,
            std::time::Duration::from_secs(60),
            "m".into(),
        );
        let config = SchedulerConfig {
            slots,
            streams,
            prefix_cache: true,
            step_tokens: 512,
        };
        (
            Scheduler::new(config, Arc::default(), Some(Arc::new(cache))),
            dir,
        )
    }

    fn uuid_like() -> u64 {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn with(
        dir: &std::path::Path,
        (mut job, rx): (EngineJob, Reply),
        adapters: &[(&str, f32)],
    ) -> (EngineJob, Reply) {
        job.request.adapters =
            crate::engine::AdapterSet::new(adapters.iter().map(|(name, scale)| {
                crate::engine::AdapterSpec {
                    name: (*name).into(),
                    path: dir.join(format!("{name}.gguf")),
                    sha256: format!("sha-of-{name}"),
                    scale: *scale,
                }
            }));
        (job, rx)
    }

    #[test]
    fn sequences_of_different_adapter_sets_never_share_a_step_and_each_gets_its_own_output() {
        let (mut s, dir) = with_adapters(12, 12);
        let mut session = FakeSession::new(12, 1024, 512);
        let sets: [&[(&str, f32)]; 4] = [
            &[("fashion", 1.0)],
            &[],
            &[("sports", 1.0)],
            &[("fashion", 1.0), ("tone", 0.5)],
        ];
        let mut replies = Vec::new();
        for i in 0..12 {
            let set = sets[i % 4];
            let user = format!("request number {i} with a text of its own");
            let (j, r) = with(&dir, job(None, &user, 200), set);
            assert_eq!(s.admit(&mut session, j), 0);
            replies.push((user, set, r));
        }
        assert_eq!(run_until_idle(&mut s, &mut session), 12);
        // Admitted in turn with the others into a full context, a set's sequences still sit
        // on at most two runs of consecutive ids (the lowest free slot would give three).
        assert!(
            session.max_runs_in_one_batch <= 2,
            "{} passes in one step",
            session.max_runs_in_one_batch
        );
        for (user, set, mut r) in replies {
            let mut names: Vec<String> = set
                .iter()
                .map(|(n, sc)| match sc {
                    1.0 => (*n).to_owned(),
                    sc => format!("{n}*{sc}"),
                })
                .collect();
            names.sort();
            let expected = match names.is_empty() {
                true => format!("echo: {user}"),
                false => format!("echo[{}]: {user}", names.join("+")),
            };
            assert_eq!(r.try_recv().unwrap().unwrap().text, expected);
        }
        // Each set ran in runs of steps, not one switch per step.
        assert!(
            session.adapter_switches < session.batch_sets.len() / 2,
            "{} switches over {} steps",
            session.adapter_switches,
            session.batch_sets.len()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn four_sets_arriving_in_turn_fill_sixteen_slots_in_four_runs() {
        let (mut s, dir) = with_adapters(16, 16);
        let mut session = FakeSession::new(16, 1024, 512);
        let sets: [&[(&str, f32)]; 4] = [
            &[("fashion", 1.0)],
            &[("sports", 1.0)],
            &[],
            &[("tone", 1.0)],
        ];
        let mut replies = Vec::new();
        for i in 0..16 {
            let (j, r) = with(&dir, job(None, &format!("request {i}"), 50), sets[i % 4]);
            assert_eq!(s.admit(&mut session, j), 0);
            replies.push(r);
        }
        for _ in 0..40 {
            s.step(&mut session, false);
        }
        assert_eq!(session.max_runs_in_one_batch, 1, "every step is one pass");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn busy_adapter_sets_take_turns_of_at_most_the_quantum() {
        let (mut s, dir) = with_adapters(4, 4);
        let mut session = FakeSession::new(4, 4096, 512);
        let long = "x".repeat(300);
        let mut replies = Vec::new();
        for set in [
            &[("fashion", 1.0)][..],
            &[("sports", 1.0)],
            &[],
            &[("tone", 1.0)],
        ] {
            let (j, r) = with(&dir, job(None, &long, 1000), set);
            s.admit(&mut session, j);
            replies.push(r);
        }
        run_until_idle(&mut s, &mut session);
        for mut r in replies {
            assert!(!r.try_recv().unwrap().unwrap().text.starts_with("MIXED"));
        }
        // While all four are busy, no set waits more than three turns of the quantum.
        let busy = &session.batch_sets[..session.batch_sets.len() * 3 / 4];
        for set in ["fashion", "sports", "", "tone"] {
            let mut waited = 0;
            for s in busy {
                waited = if s == set { 0 } else { waited + 1 };
                assert!(waited <= 3 * ADAPTER_QUANTUM_STEPS, "`{set}` starved");
            }
        }
        let mut runs: Vec<usize> = Vec::new();
        for (i, set) in busy.iter().enumerate() {
            if i == 0 || busy[i - 1] != *set {
                runs.push(0);
            }
            *runs.last_mut().unwrap() += 1;
        }
        assert!(runs.iter().all(|&r| r <= ADAPTER_QUANTUM_STEPS), "{runs:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cached_prefix_is_reused_only_under_the_same_adapter_set() {
        let (mut s, dir) = with_adapters(1, 3);
        let mut session = FakeSession::new(1, 1024, 512);
        let first = run_one(
            &mut s,
            &mut session,
            with(&dir, job(Some(SYSTEM), "a", 20), &[("fashion", 1.0)]),
        );
        assert_eq!(first.text, "echo[fashion]: a");
        let base = run_one(&mut s, &mut session, job(Some(SYSTEM), "b", 20));
        assert_eq!(base.cached_prompt_tokens, 0, "computed under another set");
        assert_eq!(base.text, "echo: b");
        let again = run_one(
            &mut s,
            &mut session,
            with(&dir, job(Some(SYSTEM), "c", 20), &[("fashion", 1.0)]),
        );
        assert_eq!(again.cached_prompt_tokens as usize, SYSTEM.len() + 1);
        assert_eq!(again.text, "echo[fashion]: c");
        // Scale 0 is the base model, and shares its cache.
        let zero = run_one(
            &mut s,
            &mut session,
            with(&dir, job(Some(SYSTEM), "d", 20), &[("sports", 0.0)]),
        );
        assert_eq!(zero.cached_prompt_tokens as usize, SYSTEM.len() + 1);
        assert_eq!(zero.text, "echo: d");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_adapter_that_cannot_load_fails_its_own_request_only() {
        let (mut s, dir) = with_adapters(2, 2);
        let mut session = FakeSession::new(2, 1024, 512);
        let (bad, mut rbad) = with(&dir, job(None, "bad", 20), &[("broken", 1.0)]);
        assert_eq!(s.admit(&mut session, bad), 1, "answered at once");
        assert!(matches!(
            rbad.try_recv().unwrap(),
            Err(EngineError::Load(_))
        ));
        let ok = run_one(
            &mut s,
            &mut session,
            with(&dir, job(None, "fine", 20), &[("tone", 1.0)]),
        );
        assert_eq!(ok.text, "echo[tone]: fine");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
