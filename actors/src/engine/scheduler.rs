//! Continuous batching over one inference context.
//!
//! Up to `slots` sequences run at once, one per slot (its llama.cpp sequence id). Each
//! [`Scheduler::step`] builds one batch: first one token for every sequence that is decoding,
//! then prompt tokens of sequences still prefilling, oldest first, within the batch size; while
//! others decode, one step prefills at most `max_prefill_per_step` tokens, so that a long prompt
//! delays the others' next token by a bounded amount. One `decode` call runs the batch; every
//! sequence whose logits were requested samples its next token with its own sampler. New jobs
//! join between steps; a sequence that finishes, is cancelled (its caller left, its deadline
//! passed, the replica is stopping) or fails leaves at once and frees its slot and its KV.
//!
//! Prompt prefixes (the rendered system prompt of a function) are cached per context: once the
//! first sequence with a given prefix has it in its KV, the prefix is copied to a spare sequence
//! id; later sequences copy it from there and prefill only the rest.

use std::time::Instant;

use super::text::TextState;
use super::{BatchItem, Completion, EngineError, EngineJob, SeqId, Session, TokenId};
use crate::FinishReason;

/// Prefixes shorter than this are cheaper to prefill than to manage.
pub(crate) const MIN_PREFIX_TOKENS: usize = 16;
/// Cached prefixes per context.
pub(crate) const PREFIX_ENTRIES: usize = 2;

struct Running {
    job: EngineJob,
    admitted: u64,
    tokens: Vec<TokenId>,
    prefix_len: usize,
    /// Positions already in the KV cache.
    n_past: usize,
    cached: usize,
    /// The prefix entry this sequence is writing while it prefills.
    filling: Option<SeqId>,
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

struct PrefixEntry {
    seq: SeqId,
    tokens: Vec<TokenId>,
    ready: bool,
    last_used: u64,
}

pub(crate) struct Scheduler {
    slots: Vec<Option<Running>>,
    prefixes: Vec<Option<PrefixEntry>>,
    max_prefill_per_step: usize,
    clock: u64,
    batch: Vec<BatchItem>,
}

impl Scheduler {
    pub(crate) fn new(slots: usize, max_prefill_per_step: usize) -> Self {
        Self {
            slots: (0..slots).map(|_| None).collect(),
            prefixes: (0..PREFIX_ENTRIES).map(|_| None).collect(),
            max_prefill_per_step,
            clock: 0,
            batch: Vec::new(),
        }
    }

    pub(crate) fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub(crate) fn free_slots(&self) -> usize {
        self.slots.len() - self.active()
    }

    /// The sequence id of the `i`-th prefix entry: after the slots'.
    fn prefix_seq(&self, i: usize) -> SeqId {
        (self.slots.len() + i) as SeqId
    }

    /// Puts a job in a free slot. Returns how many jobs left the engine (1 when the job was
    /// answered at once, because it cannot run), so that the caller can report freed slots.
    pub(crate) fn admit(&mut self, session: &mut dyn Session, job: EngineJob) -> usize {
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            let _ = job
                .reply
                .send(Err(EngineError::Crashed("no free slot".into())));
            return 1;
        };
        let seq = slot as SeqId;
        let tokenized = match session.tokenize(&job.request.prompt) {
            Ok(t) => t,
            Err(err) => return reject(job, err),
        };
        let n_ctx = session.n_ctx_per_seq();
        let max_tokens = job.request.params.max_tokens;
        if tokenized.tokens.is_empty()
            || tokenized.tokens.len() as u64 + u64::from(max_tokens) > u64::from(n_ctx)
        {
            let err = EngineError::PromptTooLong {
                prompt_tokens: tokenized.tokens.len() as u32,
                max_tokens,
                n_ctx,
            };
            return reject(job, err);
        }
        if let Err(err) = session.begin(seq, &job.request.params, &job.request.output) {
            return reject(job, err);
        }
        self.clock += 1;
        // The last prompt token is always computed, for its logits.
        let prefix_len = tokenized.prefix_len.min(tokenized.tokens.len() - 1);
        let mut running = Running {
            job,
            admitted: self.clock,
            tokens: tokenized.tokens,
            prefix_len,
            n_past: 0,
            cached: 0,
            filling: None,
            last_token: None,
            generated: 0,
            text: TextState::default(),
            started_at: Instant::now(),
            prefill_done_at: None,
            first_token_at: None,
            batch_index: None,
            batch_prompt: 0,
        };
        if prefix_len >= MIN_PREFIX_TOKENS {
            self.attach_prefix(session, seq, &mut running);
        }
        self.slots[slot] = Some(running);
        0
    }

    fn attach_prefix(&mut self, session: &mut dyn Session, seq: SeqId, running: &mut Running) {
        let key = &running.tokens[..running.prefix_len];
        let clock = self.clock;
        if let Some(entry) = self.prefixes.iter_mut().flatten().find(|e| e.tokens == key) {
            if entry.ready {
                session.copy_prefix(entry.seq, seq, key.len());
                entry.last_used = clock;
                running.n_past = key.len();
                running.cached = key.len();
            }
            // An entry still being written is simply not used yet.
            return;
        }
        // Make room: evict the least recently used finished entry.
        if self.prefixes.iter().all(Option::is_some) {
            let victim = self
                .prefixes
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().filter(|e| e.ready).map(|e| (i, e.last_used)))
                .min_by_key(|(_, used)| *used)
                .map(|(i, _)| i);
            let Some(i) = victim else { return };
            if let Some(entry) = self.prefixes[i].take() {
                session.end(entry.seq);
            }
        }
        if let Some(i) = self.prefixes.iter().position(Option::is_none) {
            let entry_seq = self.prefix_seq(i);
            self.prefixes[i] = Some(PrefixEntry {
                seq: entry_seq,
                tokens: key.to_vec(),
                ready: false,
                last_used: clock,
            });
            running.filling = Some(entry_seq);
        }
    }

    /// Runs one decode step. Returns how many jobs left the engine.
    pub(crate) fn step(&mut self, session: &mut dyn Session, stopping: bool) -> usize {
        let now = Instant::now();
        let mut left = 0;
        for slot in 0..self.slots.len() {
            let Some(r) = &self.slots[slot] else { continue };
            let reason = if stopping || r.job.caller_gone() {
                Some(EngineError::Cancelled)
            } else if now >= r.job.request.deadline {
                Some(EngineError::DeadlineExceeded)
            } else {
                None
            };
            if let Some(err) = reason {
                left += self.finish(session, slot, Err(err));
            }
        }

        self.batch.clear();
        let n_batch = session.n_batch();
        for (slot, r) in self.slots.iter_mut().enumerate() {
            let Some(r) = r else { continue };
            r.batch_index = None;
            r.batch_prompt = 0;
            if let Some(token) = r.last_token {
                r.batch_index = Some(self.batch.len());
                self.batch.push(BatchItem {
                    token,
                    pos: r.n_past as i32,
                    seq: slot as SeqId,
                    logits: true,
                });
            }
        }
        let decoding = self.batch.len();
        let mut budget = n_batch.saturating_sub(decoding);
        if decoding > 0 {
            budget = budget.min(self.max_prefill_per_step);
        }
        let mut prefilling: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|r| r.last_token.is_none())
            })
            .collect();
        prefilling.sort_by_key(|&i| self.slots[i].as_ref().map(|r| r.admitted));
        for slot in prefilling {
            if budget == 0 {
                break;
            }
            let r = self.slots[slot].as_mut().expect("slot is running");
            let take = (r.tokens.len() - r.n_past).min(budget);
            for pos in r.n_past..r.n_past + take {
                let last = pos == r.tokens.len() - 1;
                if last {
                    r.batch_index = Some(self.batch.len());
                }
                self.batch.push(BatchItem {
                    token: r.tokens[pos],
                    pos: pos as i32,
                    seq: slot as SeqId,
                    logits: last,
                });
            }
            r.batch_prompt = take;
            budget -= take;
        }
        if self.batch.is_empty() {
            return left;
        }

        if let Err(err) = session.decode(&self.batch) {
            tracing::error!(error = %err, batch = self.batch.len(), "decode failed");
            return left + self.fail_all(session, err);
        }

        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let Some(r) = self.slots[slot].as_mut() else {
                continue;
            };
            if r.batch_prompt > 0 {
                r.n_past += r.batch_prompt;
                if let Some(entry_seq) = r.filling {
                    if r.n_past >= r.prefix_len {
                        r.filling = None;
                        session.copy_prefix(slot as SeqId, entry_seq, r.prefix_len);
                        if let Some(e) = self
                            .prefixes
                            .iter_mut()
                            .flatten()
                            .find(|e| e.seq == entry_seq)
                        {
                            e.ready = true;
                        }
                    }
                }
            } else if r.last_token.is_some() && r.batch_index.is_some() {
                r.n_past += 1;
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
            let sampled = session.sample(slot as SeqId, index);
            r.first_token_at.get_or_insert(now);
            if sampled.end_of_generation {
                left += self.finish(session, slot, Ok(FinishReason::Stop));
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
                left += self.finish(session, slot, Ok(FinishReason::StopSequence));
            } else if r.generated >= r.job.request.params.max_tokens {
                left += self.finish(session, slot, Ok(FinishReason::Length));
            } else {
                r.last_token = Some(sampled.token);
            }
        }
        left
    }

    /// Ends the sequence in `slot`, answers its job and frees its KV. Returns 1.
    fn finish(
        &mut self,
        session: &mut dyn Session,
        slot: usize,
        outcome: Result<FinishReason, EngineError>,
    ) -> usize {
        let Some(r) = self.slots[slot].take() else {
            return 0;
        };
        session.end(slot as SeqId);
        if let Some(entry_seq) = r.filling {
            // The prefix was not completely written: it is of no use to anyone.
            if let Some(i) = self
                .prefixes
                .iter()
                .position(|e| e.as_ref().is_some_and(|e| e.seq == entry_seq))
            {
                self.prefixes[i] = None;
                session.end(entry_seq);
            }
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
                prompt_tokens: r.tokens.len() as u32,
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

    /// Answers every running job with `err` (after a failed decode, or a panic). Returns how
    /// many left.
    pub(crate) fn fail_all(&mut self, session: &mut dyn Session, err: EngineError) -> usize {
        (0..self.slots.len())
            .map(|slot| self.finish(session, slot, Err(err.clone())))
            .sum()
    }
}

fn reject(job: EngineJob, err: EngineError) -> usize {
    let _ = job.reply.send(Err(err));
    1
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use genrt_functions::{GenerationParams, OutputSpec, RenderedPrompt, TenantId};
    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::fake::FakeSession;
    use crate::engine::{stream_channel, EngineRequest};

    fn job(
        system: Option<&str>,
        user: &str,
        max_tokens: u32,
    ) -> (
        EngineJob,
        oneshot::Receiver<Result<Completion, EngineError>>,
    ) {
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
                deadline: Instant::now() + Duration::from_secs(30),
                fault: None,
            },
            tenant: TenantId::parse("acme").unwrap(),
            enqueued_at: Instant::now(),
            load_wait: Duration::ZERO,
            low_priority: false,
            stream: None,
            reply,
        };
        (job, rx)
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

    #[test]
    fn sequences_share_decode_steps_and_each_gets_its_own_text() {
        let mut session = FakeSession::new(4, 256, 64);
        let mut s = Scheduler::new(4, 32);
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

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks_while_others_decode() {
        let mut session = FakeSession::new(2, 4096, 512);
        let mut s = Scheduler::new(2, 16);
        let (short, _r1) = job(None, "hi", 200);
        s.admit(&mut session, short);
        s.step(&mut session, false); // prefill of the short prompt
        let long_prompt = "x".repeat(400);
        let (long, _r2) = job(None, &long_prompt, 10);
        s.admit(&mut session, long);
        s.step(&mut session, false);
        // One decode token for the short sequence plus at most 16 prompt tokens.
        assert_eq!(session.last_batch_len, 17);
    }

    #[test]
    fn max_tokens_stops_with_length_and_a_gone_caller_frees_the_slot() {
        let mut session = FakeSession::new(2, 256, 64);
        let mut s = Scheduler::new(2, 32);
        let (a, mut ra) = job(None, "a long enough text", 3);
        s.admit(&mut session, a);
        run_until_idle(&mut s, &mut session);
        let done = ra.try_recv().unwrap().unwrap();
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
        assert!(session.live_sequences().is_empty(), "its KV was freed");
    }

    #[test]
    fn deadline_and_context_limits_are_enforced() {
        let mut session = FakeSession::new(1, 32, 64);
        let mut s = Scheduler::new(1, 32);
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
        let system = "You are a careful assistant who follows the house style.";
        let mut session = FakeSession::new(2, 512, 512);
        let mut s = Scheduler::new(2, 64);
        let (a, mut ra) = job(Some(system), "first", 50);
        s.admit(&mut session, a);
        run_until_idle(&mut s, &mut session);
        let first = ra.try_recv().unwrap().unwrap();
        assert_eq!(first.cached_prompt_tokens, 0);
        let (b, mut rb) = job(Some(system), "second", 50);
        s.admit(&mut session, b);
        run_until_idle(&mut s, &mut session);
        let second = rb.try_recv().unwrap().unwrap();
        assert_eq!(second.text, "echo: second");
        assert_eq!(second.cached_prompt_tokens as usize, system.len() + 1);
        assert_eq!(session.copies, 2, "one copy into the cache, one out of it");
    }
}
