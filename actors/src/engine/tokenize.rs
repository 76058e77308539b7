//! Prompt tokenization that does not pay llama.cpp's fixed cost on every fragment, every time.
//!
//! Why: llama.cpp (`llama_vocab::impl::tokenize`) first cuts a prompt at the special tokens
//! it contains (`<|im_start|>`, `<|im_end|>`, ...), then runs its BPE pre-tokenizer on each
//! text fragment. For several pre-tokenizers (SmolLM2's `smollm`, and the others that split
//! digits with `\p{N}`) one of the splitting regexes has no hand-written implementation and
//! goes through `std::regex`, compiled again for every fragment: about 30 µs per fragment on
//! the 2-core machines, whatever its length. A chat prompt has two fragments per turn, all
//! tokenized again on every turn, on the engine thread, where no stream decodes meanwhile:
//! a one-token invocation spent 0.3 of its 1.5 ms of runtime overhead here, and a 20-turn
//! conversation over a millisecond per turn.
//!
//! What: the same cut, made here (the algorithm of `tokenizer_st_partition`, special tokens
//! taken in the same order, longest first), and each text fragment tokenized by llama.cpp on
//! its own and remembered: a function's system prompt, the role headers and a conversation's
//! earlier turns come back from memory, and only new text reaches llama.cpp. The result is
//! exactly what llama.cpp returns for the whole prompt (checked against it on the real model
//! in the tests below), and this path is taken only where that holds by construction:
//! BPE vocabularies, whose fragments are tokenized independently of each other (SentencePiece
//! prefixes a space depending on the fragment before), and special tokens whose order
//! llama.cpp leaves undefined (equal lengths) never overlapping. Elsewhere llama.cpp
//! tokenizes the whole text, as before.

use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;

use super::TokenId;

/// Bytes of remembered fragments per model: text, 4 per token, and `ENTRY_BYTES` each.
const FRAGMENT_CACHE_BYTES: u64 = 8 << 20;
/// What one entry costs besides its text and tokens (the cache's own bookkeeping, the
/// allocations' headers), so that many short fragments stay within the bound too.
const ENTRY_BYTES: usize = 256;
/// Fragments longer than this are tokenized each time (a pasted document is rarely repeated,
/// and would push out many short ones).
const LONGEST_REMEMBERED: usize = 64 << 10;
/// Special tokens of one length beyond which the overlap check (quadratic) is not attempted.
const MAX_SAME_LENGTH_SPECIALS: usize = 512;

pub(super) struct PromptTokenizer {
    /// `None` where the cut cannot be made here exactly: llama.cpp tokenizes whole texts.
    plan: Option<Plan>,
    fragments: moka::sync::Cache<Box<[u8]>, Arc<[TokenId]>>,
}

struct Plan {
    /// In llama.cpp's order: longest text first.
    specials: Vec<Special>,
    /// Added before and after the whole prompt, as `add_special` does.
    bos: Option<TokenId>,
    eos: Option<TokenId>,
}

#[derive(Debug, Clone)]
struct Special {
    id: TokenId,
    text: Vec<u8>,
    /// Whitespace before (after) an occurrence is dropped (`LLAMA_TOKEN_ATTR_LSTRIP`/`RSTRIP`).
    lstrip: bool,
    rstrip: bool,
}

/// A piece of the prompt after the cut: text for the BPE tokenizer, or a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a [u8]),
    Token(TokenId),
}

impl PromptTokenizer {
    pub(super) fn new(model: &LlamaModel) -> Self {
        Self {
            plan: Plan::read(model),
            fragments: moka::sync::Cache::<Box<[u8]>, Arc<[TokenId]>>::builder()
                .max_capacity(FRAGMENT_CACHE_BYTES)
                .weigher(|text, tokens| {
                    u32::try_from(ENTRY_BYTES + text.len() + 4 * tokens.len()).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// What `llama_tokenize(text, add_special = true, parse_special = true)` returns.
    pub(super) fn tokenize(&self, model: &LlamaModel, text: &str) -> Vec<TokenId> {
        let vocab = model.vocab();
        let Some(plan) = &self.plan else {
            return ids(vocab.tokenize(text.as_bytes(), true, true));
        };
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        out.extend(plan.bos);
        for piece in partition(text.as_bytes(), &plan.specials) {
            match piece {
                Piece::Token(id) => out.push(id),
                Piece::Text(fragment) if fragment.len() > LONGEST_REMEMBERED => {
                    out.extend(ids(vocab.tokenize(fragment, false, false)));
                }
                Piece::Text(fragment) => match self.fragments.get(fragment) {
                    Some(tokens) => out.extend_from_slice(&tokens),
                    None => {
                        let tokens: Arc<[TokenId]> =
                            ids(vocab.tokenize(fragment, false, false)).into();
                        out.extend_from_slice(&tokens);
                        self.fragments.insert(fragment.into(), tokens);
                    }
                },
            }
        }
        out.extend(plan.eos);
        out
    }
}

fn ids(tokens: Vec<LlamaToken>) -> Vec<TokenId> {
    tokens.into_iter().map(|t| t.0).collect()
}

impl Plan {
    fn read(model: &LlamaModel) -> Option<Self> {
        // Read directly: llama-cpp-2's `vocab_type` panics on the types it does not name
        // (WPM, UGM, RWKV: embedding and T5-style models).
        // SAFETY: the model's pointer and its vocabulary are valid while `model` lives.
        let kind = unsafe {
            llama_cpp_sys_2::llama_vocab_type(llama_cpp_sys_2::llama_model_get_vocab(
                super::llama::raw_model(model),
            ))
        };
        if kind != llama_cpp_sys_2::LLAMA_VOCAB_TYPE_BPE {
            return None;
        }
        let vocab = model.vocab();
        let mut specials = Vec::new();
        for token in vocab.tokens() {
            let attr = vocab.attr(token);
            let special = attr.contains(LlamaTokenAttr::Control)
                || attr.contains(LlamaTokenAttr::UserDefined)
                || attr.contains(LlamaTokenAttr::Unknown);
            if !special {
                continue;
            }
            let text = vocab.text(token)?.to_bytes().to_vec();
            if text.is_empty() {
                // llama.cpp would search for an empty string; never seen, not mirrored.
                return None;
            }
            specials.push(Special {
                id: token.0,
                text,
                lstrip: attr.contains(LlamaTokenAttr::LStrip),
                rstrip: attr.contains(LlamaTokenAttr::RStrip),
            });
        }
        let specials = ordered(specials)?;
        let bos = vocab.should_add_bos().then(|| vocab.bos().0);
        let eos = vocab.should_add_eos().then(|| vocab.eos().0);
        Some(Self { specials, bos, eos })
    }
}

/// Longest first, as llama.cpp sorts them. Its sort is not stable, so the order of two tokens
/// of one length is unknown: `None` when two such can overlap in a text (one's end is the
/// other's start) or have the same text, the only cases where that order changes the cut.
fn ordered(mut specials: Vec<Special>) -> Option<Vec<Special>> {
    specials.sort_by_key(|s| std::cmp::Reverse(s.text.len()));
    for group in specials.chunk_by(|a, b| a.text.len() == b.text.len()) {
        if group.len() > MAX_SAME_LENGTH_SPECIALS {
            return None;
        }
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                if a.text == b.text || overlap(&a.text, &b.text) || overlap(&b.text, &a.text) {
                    return None;
                }
            }
        }
    }
    Some(specials)
}

/// Whether a proper suffix of `a` is a prefix of `b`.
fn overlap(a: &[u8], b: &[u8]) -> bool {
    (1..a.len().min(b.len())).any(|k| a[a.len() - k..] == b[..k])
}

/// C's `isspace` in the "C" locale, which llama.cpp strips with.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `tokenizer_st_partition` with `parse_special`: for each special token in turn, every
/// occurrence in the text pieces left so far becomes that token, the text around it new pieces.
fn partition<'a>(text: &'a [u8], specials: &[Special]) -> Vec<Piece<'a>> {
    let mut pieces = if text.is_empty() {
        Vec::new()
    } else {
        vec![Piece::Text(text)]
    };
    let mut next = Vec::new();
    for special in specials {
        let needle = special.text.as_slice();
        next.clear();
        for piece in &pieces {
            let Piece::Text(mut rest) = *piece else {
                next.push(*piece);
                continue;
            };
            while let Some(at) = find(rest, needle) {
                let mut left = &rest[..at];
                if special.lstrip {
                    while let [head @ .., last] = left {
                        if !is_c_space(*last) {
                            break;
                        }
                        left = head;
                    }
                }
                if !left.is_empty() {
                    next.push(Piece::Text(left));
                }
                next.push(Piece::Token(special.id));
                rest = &rest[at + needle.len()..];
                if special.rstrip {
                    while let [first, tail @ ..] = rest {
                        if !is_c_space(*first) {
                            break;
                        }
                        rest = tail;
                    }
                }
            }
            if !rest.is_empty() {
                next.push(Piece::Text(rest));
            }
        }
        std::mem::swap(&mut pieces, &mut next);
    }
    pieces
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special(id: TokenId, text: &str) -> Special {
        Special {
            id,
            text: text.as_bytes().to_vec(),
            lstrip: false,
            rstrip: false,
        }
    }

    fn texts<'a>(pieces: &[Piece<'a>]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
                Piece::Token(id) => format!("#{id}"),
            })
            .collect()
    }

    #[test]
    fn cuts_at_every_special_token_longest_first() {
        let specials = ordered(vec![
            special(1, "<s>"),
            special(2, "<s><s>"),
            special(3, "<|x|>"),
        ])
        .expect("no overlap");
        assert_eq!(specials[0].id, 2, "longest first");
        let cut = partition(b"a<s><s>b<|x|><s>c<|x|>", &specials);
        assert_eq!(texts(&cut), ["'a'", "#2", "'b'", "#3", "#1", "'c'", "#3"]);
        assert!(partition(b"", &specials).is_empty());
        assert_eq!(texts(&partition(b"<s", &specials)), ["'<s'"]);
    }

    #[test]
    fn strips_whitespace_where_the_token_says_so() {
        let mut l = special(7, "<mask>");
        l.lstrip = true;
        let mut r = special(8, "</s>");
        r.rstrip = true;
        let specials = ordered(vec![l, r]).unwrap();
        let cut = partition(b"a \t<mask>  b</s> \x0b c", &specials);
        assert_eq!(texts(&cut), ["'a'", "#7", "'  b'", "#8", "'c'"]);
        // Only whitespace between: nothing is left of it.
        assert_eq!(texts(&partition(b"  <mask>", &specials)), ["#7"]);
    }

    #[test]
    fn refuses_equal_length_tokens_that_can_overlap() {
        // In "abc", "ab" or "bc" wins depending on an order llama.cpp leaves undefined.
        assert!(ordered(vec![special(1, "ab"), special(2, "bc")]).is_none());
        assert!(ordered(vec![special(1, "ab"), special(2, "cd")]).is_some());
        // Two ids for one text: which one llama.cpp picks is unknown.
        assert!(ordered(vec![special(1, "<x>"), special(2, "<x>")]).is_none());
        // Different lengths are ordered, whatever they share.
        assert!(ordered(vec![special(1, "abc"), special(2, "cd")]).is_some());
    }

    /// Against llama.cpp itself, on the real model: every prompt shape the engine sends.
    #[test]
    fn matches_llama_cpp_on_smollm2() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let backend = super::super::llama::llama_backend().expect("backend");
        let params = llama_cpp_2::model::params::LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(&backend, &path, &params).expect("model");
        let tokenizer = PromptTokenizer::new(&model);
        assert!(tokenizer.plan.is_some(), "SmolLM2 takes the fast path");
        let chat = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n";
        let cases = [
            chat.to_owned(),
            format!("{chat}Sure: 1234567 items, 3.14 each.<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n"),
            String::new(),
            " ".into(),
            "\n\n  \t".into(),
            "<|im_start|><|im_end|><|im_start|>".into(),
            "<|im_st".into(),
            "x<|im_start|>".into(),
            "<|endoftext|>after".into(),
            "naïve café 東京 🙂 ünïcödé ١٢٣ ²³".into(),
            "don't   stop\r\n\r\nbelieving's  ".into(),
            "<|im_start|>user\n<|im_start|>nested <|im_end|> text<|im_end|>".into(),
            "Answer carefully, cite the guide. ".repeat(40),
        ];
        for text in &cases {
            let expected = ids(model.vocab().tokenize(text.as_bytes(), true, true));
            // Twice: the second time from remembered fragments.
            assert_eq!(tokenizer.tokenize(&model, text), expected, "{text:?}");
            assert_eq!(
                tokenizer.tokenize(&model, text),
                expected,
                "{text:?} (cached)"
            );
        }
    }
}
