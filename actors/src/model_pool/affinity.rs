//! Cache-aware placement across a model's replicas: which replica probably holds a prompt's
//! longest prefix in its prefix cache.
//!
//! The pool never sees tokens (a replica tokenizes on its own thread), so, as SGLang's router
//! does, it keeps an approximate index of the text it sent each replica: the prompt (tenant,
//! then each message with its role, as a conversation resends them) cut into fixed blocks,
//! each block's hash chained to the previous one's, so that a block hash stands for the whole
//! text up to it (vLLM's hashed blocks). A prompt's match on a replica is the number of its
//! leading blocks that replica was sent. The index forgets the least recently sent blocks
//! beyond a bound, as the replicas' caches forget; it is a hint, never a correctness matter:
//! a wrong guess costs a prefill, nothing else.
//!
//! The tenant is hashed first, so one tenant's prompts never match another's: placement
//! reveals nothing across tenants either. So is the adapter set: a replica's cached KV is
//! reused only by sequences of the set that computed it (see the scheduler).
//!
//! Adapter-affine placement ([`SetHomes`]): llama.cpp applies LoRA adapters to a whole
//! context, so a replica's decode step runs the sequences of one adapter set while its other
//! sets wait their turn (the scheduler's quantum). A set's sequences spread over two replicas
//! make both take steps of half the batch, each step paying its fixed cost (the weights read
//! once per step, graph, sampling, thread wake-ups): on the 2-core CPU a step of 4 sequences
//! costs over a third of one of 16. Kept on one replica, a set's sequences share its steps
//! while the other replicas run other sets, side by side. So the pool remembers where each
//! set's work went (its home), sends the set's next jobs there within the same bounded
//! imbalance as prefix affinity, and gives a set without a home the replica with the fewest
//! sets. As the routers in front of vLLM do for LoRA (llm-d's and the Gateway API inference
//! extension's adapter affinity), at the pool's own level. Measured by `genrt-bench-models`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use genrt_functions::{RenderedPrompt, TenantId};

use super::state::ReplicaKey;
use crate::engine::AdapterKey;

/// Bytes of prompt text per block.
const BLOCK_BYTES: usize = 64;
/// Block hashes remembered per replica: about 1 MiB of prompt text each.
const MAX_BLOCKS: usize = 16 * 1024;

/// The chained block hashes of a prompt run with adapter set `set`.
pub(crate) fn prompt_blocks(
    tenant: &TenantId,
    set: &AdapterKey,
    prompt: &RenderedPrompt,
) -> Vec<u64> {
    let mut text = Vec::with_capacity(256);
    let mut turn = |role: &str, content: &str| {
        text.extend_from_slice(role.as_bytes());
        text.push(0);
        text.extend_from_slice(content.as_bytes());
        text.push(0x1e);
    };
    if prompt.raw {
        turn("raw", &prompt.user);
    } else {
        if let Some(system) = &prompt.system {
            turn("system", system);
        }
        for t in &prompt.history {
            turn(t.role.as_str(), &t.content);
        }
        turn("user", &prompt.user);
    }
    // A fixed-key hasher: the same text must hash the same on every call.
    let state =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    let mut seed = state.build_hasher();
    seed.write(tenant.as_str().as_bytes());
    std::hash::Hash::hash(set, &mut seed);
    let mut previous = seed.finish();
    text.chunks_exact(BLOCK_BYTES)
        .map(|block| {
            let mut h = state.build_hasher();
            h.write_u64(previous);
            h.write(block);
            previous = h.finish();
            previous
        })
        .collect()
}

/// What one replica was sent, by block hash, with when it was last sent.
#[derive(Default)]
pub(crate) struct ReplicaIndex {
    blocks: HashMap<u64, u64>,
    clock: u64,
}

impl ReplicaIndex {
    /// How many leading blocks of `blocks` this replica was sent.
    pub(crate) fn matched(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|b| self.blocks.contains_key(b))
            .count()
    }

    pub(crate) fn record(&mut self, blocks: &[u64]) {
        self.clock += 1;
        for b in blocks {
            self.blocks.insert(*b, self.clock);
        }
        if self.blocks.len() > MAX_BLOCKS {
            // Forget the oldest quarter at once, so that the sort is paid rarely.
            let mut ages: Vec<u64> = self.blocks.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 4];
            self.blocks.retain(|_, sent| *sent > cut);
        }
    }
}

/// A set is at home on a replica while its work went there within this long. A hint: a
/// set whose streams outlive it is only placed as if new, costing steps, never correctness.
const HOME_TTL: Duration = Duration::from_secs(30);
/// Homes remembered at most; beyond, the expired ones are dropped, then the oldest.
const MAX_HOMES: usize = 1024;

/// Where each adapter set's work was last sent (see the module's documentation).
#[derive(Default)]
pub(crate) struct SetHomes {
    homes: HashMap<AdapterKey, (ReplicaKey, Instant)>,
}

impl SetHomes {
    fn live(&self, now: Instant) -> impl Iterator<Item = (&AdapterKey, ReplicaKey)> {
        self.homes
            .iter()
            .filter(move |(_, (_, at))| now.saturating_duration_since(*at) < HOME_TTL)
            .map(|(set, (replica, _))| (set, *replica))
    }

    /// Whether placement should mind adapter sets for a job of `set`: it runs adapters, or
    /// adapters run on the model now (the base then is a set like the others). A model that
    /// serves only its base is placed by load and prefix alone.
    pub(crate) fn applies(&self, set: &AdapterKey, now: Instant) -> bool {
        !set.is_base() || self.live(now).any(|(s, _)| !s.is_base())
    }

    /// The replica `set`'s work went to lately.
    pub(crate) fn home(&self, set: &AdapterKey, now: Instant) -> Option<ReplicaKey> {
        self.homes
            .get(set)
            .filter(|(_, at)| now.saturating_duration_since(*at) < HOME_TTL)
            .map(|(replica, _)| *replica)
    }

    /// How many sets live on `replica`.
    pub(crate) fn sets_on(&self, replica: ReplicaKey, now: Instant) -> usize {
        self.live(now).filter(|(_, r)| *r == replica).count()
    }

    pub(crate) fn record(&mut self, set: AdapterKey, replica: ReplicaKey, now: Instant) {
        self.homes.insert(set, (replica, now));
        if self.homes.len() > MAX_HOMES {
            self.homes
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < HOME_TTL);
        }
        // More sets than that within the TTL: the oldest homes go, so that the map (scanned
        // at each placement) stays bounded.
        while self.homes.len() > MAX_HOMES {
            let oldest = self
                .homes
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(set, _)| set.clone());
            match oldest {
                Some(set) => self.homes.remove(&set),
                None => break,
            };
        }
    }

    /// A replica that stopped or failed is nobody's home.
    pub(crate) fn forget(&mut self, replica: ReplicaKey) {
        self.homes.retain(|_, (r, _)| *r != replica);
    }
}

#[cfg(test)]
mod tests {
    use genrt_functions::{ChatRole, ChatTurn};

    use super::*;

    fn chat(system: &str, turns: &[(&str, &str)], user: &str) -> RenderedPrompt {
        RenderedPrompt {
            system: Some(system.to_owned()),
            history: turns
                .iter()
                .map(|(role, content)| ChatTurn {
                    role: if *role == "user" {
                        ChatRole::User
                    } else {
                        ChatRole::Assistant
                    },
                    content: (*content).to_owned(),
                })
                .collect(),
            user: user.to_owned(),
            ..RenderedPrompt::default()
        }
    }

    #[test]
    fn a_conversations_next_turn_matches_all_blocks_of_the_previous_one() {
        let acme = TenantId::parse("acme").unwrap();
        let system = "You are a guide. ".repeat(8);
        let first = prompt_blocks(
            &acme,
            &AdapterKey::default(),
            &chat(&system, &[], "Tell me about owls, at length please."),
        );
        let next = prompt_blocks(
            &acme,
            &AdapterKey::default(),
            &chat(
                &system,
                &[
                    ("user", "Tell me about owls, at length please."),
                    ("assistant", "Owls hunt at night."),
                ],
                "And bats?",
            ),
        );
        let mut index = ReplicaIndex::default();
        index.record(&first);
        assert!(!first.is_empty());
        assert_eq!(index.matched(&next), first.len());
        // Another tenant's identical prompt matches nothing.
        let globex = TenantId::parse("globex").unwrap();
        let theirs = prompt_blocks(
            &globex,
            &AdapterKey::default(),
            &chat(&system, &[], "Tell me about owls, at length please."),
        );
        assert_eq!(index.matched(&theirs), 0);
    }

    #[test]
    fn a_prompt_under_another_adapter_set_matches_nothing() {
        let acme = TenantId::parse("acme").unwrap();
        let p = chat(&"A shared document. ".repeat(20), &[], "Summarise it.");
        let base = prompt_blocks(&acme, &AdapterKey::default(), &p);
        let mut index = ReplicaIndex::default();
        index.record(&base);
        assert_eq!(index.matched(&base), base.len());
        let set = crate::engine::AdapterSet::new([crate::engine::AdapterSpec {
            name: "tone".into(),
            path: "/adapters/tone.gguf".into(),
            sha256: "sha-tone".into(),
            scale: 1.0,
        }]);
        assert_eq!(index.matched(&prompt_blocks(&acme, &set.key(), &p)), 0);
    }

    #[test]
    fn the_index_stays_bounded_and_keeps_what_was_sent_last() {
        let acme = TenantId::parse("acme").unwrap();
        let mut index = ReplicaIndex::default();
        let mut last = Vec::new();
        for i in 0..2000 {
            let p = chat(&format!("{i} ").repeat(100), &[], "q");
            last = prompt_blocks(&acme, &AdapterKey::default(), &p);
            index.record(&last);
        }
        assert!(index.blocks.len() <= MAX_BLOCKS);
        assert_eq!(index.matched(&last), last.len());
    }
}
