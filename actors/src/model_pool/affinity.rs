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
//! reveals nothing across tenants either.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use genrt_functions::{RenderedPrompt, TenantId};

/// Bytes of prompt text per block.
const BLOCK_BYTES: usize = 64;
/// Block hashes remembered per replica: about 1 MiB of prompt text each.
const MAX_BLOCKS: usize = 16 * 1024;

/// The chained block hashes of a prompt.
pub(crate) fn prompt_blocks(tenant: &TenantId, prompt: &RenderedPrompt) -> Vec<u64> {
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
            &chat(&system, &[], "Tell me about owls, at length please."),
        );
        let next = prompt_blocks(
            &acme,
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
            &chat(&system, &[], "Tell me about owls, at length please."),
        );
        assert_eq!(index.matched(&theirs), 0);
    }

    #[test]
    fn the_index_stays_bounded_and_keeps_what_was_sent_last() {
        let acme = TenantId::parse("acme").unwrap();
        let mut index = ReplicaIndex::default();
        let mut last = Vec::new();
        for i in 0..2000 {
            let p = chat(&format!("{i} ").repeat(100), &[], "q");
            last = prompt_blocks(&acme, &p);
            index.record(&last);
        }
        assert!(index.blocks.len() <= MAX_BLOCKS);
        assert_eq!(index.matched(&last), last.len());
    }
}
