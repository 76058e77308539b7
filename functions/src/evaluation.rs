//! Model quality: an evaluation set (inputs with reference outputs) and the two scores that
//! compare a function's outputs with the references, ROUGE-L and BLEU.
//!
//! The metrics are hand-written because the Rust crates for them are unmaintained or pull in
//! tokenizer stacks we do not need; they are small, pure, and checked below against the
//! reference implementations (`rouge-score` and `sacrebleu` from PyPI).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SpecError;

/// Most cases one evaluation set (or one evaluation request) may hold: each case is a full
/// generation, so an evaluation is bounded like any other unit of work.
pub const MAX_EVALUATION_CASES: usize = 100;
const MAX_REFERENCE_BYTES: usize = 64 * 1024;

/// One case of an evaluation set: an input and the output the function should produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationCase {
    pub input: Value,
    pub reference: String,
}

/// Checks the size limits of an evaluation set; `field` names it in the error.
pub fn validate_cases(field: &str, cases: &[EvaluationCase]) -> Result<(), SpecError> {
    if cases.len() > MAX_EVALUATION_CASES {
        return Err(SpecError::invalid(
            field,
            format!("at most {MAX_EVALUATION_CASES} cases"),
        ));
    }
    if cases
        .iter()
        .any(|c| c.reference.len() > MAX_REFERENCE_BYTES)
    {
        return Err(SpecError::invalid(
            field,
            "a reference is longer than 64 KiB",
        ));
    }
    Ok(())
}

/// Words for scoring: lowercased runs of alphanumeric characters, everything else a separator.
/// For ASCII text this is exactly the default tokenizer of Google's `rouge-score`; it also
/// keeps non-ASCII letters, which that tokenizer drops.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// ROUGE-L F-measure (β = 1) of a candidate against a reference: precision and recall of their
/// longest common subsequence of tokens. 0 when either side has no tokens, like `rouge-score`.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let c = tokenize(candidate);
    let r = tokenize(reference);
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&c, &r) as f64;
    let precision = lcs / c.len() as f64;
    let recall = lcs / r.len() as f64;
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Length of the longest common subsequence, with one row of the table at a time.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

const MAX_ORDER: usize = 4;

/// N-gram statistics of one candidate against one reference, summed over a corpus.
#[derive(Debug, Clone, Copy, Default)]
struct BleuStats {
    correct: [u64; MAX_ORDER],
    total: [u64; MAX_ORDER],
    candidate_len: u64,
    reference_len: u64,
}

impl BleuStats {
    fn of(candidate: &[String], reference: &[String]) -> Self {
        use std::collections::HashMap;
        let mut stats = BleuStats {
            candidate_len: candidate.len() as u64,
            reference_len: reference.len() as u64,
            ..Default::default()
        };
        for n in 1..=MAX_ORDER {
            let mut counts: HashMap<&[String], u64> = HashMap::new();
            for gram in reference.windows(n) {
                *counts.entry(gram).or_default() += 1;
            }
            for gram in candidate.windows(n) {
                stats.total[n - 1] += 1;
                // Clipped counts: a candidate n-gram matches at most as often as the reference
                // holds it.
                if let Some(left) = counts.get_mut(gram) {
                    if *left > 0 {
                        *left -= 1;
                        stats.correct[n - 1] += 1;
                    }
                }
            }
        }
        stats
    }

    fn add(&mut self, other: &BleuStats) {
        for n in 0..MAX_ORDER {
            self.correct[n] += other.correct[n];
            self.total[n] += other.total[n];
        }
        self.candidate_len += other.candidate_len;
        self.reference_len += other.reference_len;
    }

    /// BLEU-4 with the brevity penalty and `sacrebleu`'s default "exp" smoothing (an order
    /// without matches counts as 1/2^k of a match, k growing with each such order).
    /// `effective_order` averages only over the orders the candidate is long enough to have,
    /// as `sacrebleu.sentence_bleu` does; the corpus score does not.
    fn score(&self, effective_order: bool) -> f64 {
        if self.correct.iter().all(|&c| c == 0) {
            return 0.0;
        }
        let mut precisions = [0.0f64; MAX_ORDER];
        let mut smooth = 1.0;
        let mut order = MAX_ORDER;
        for (n, precision) in precisions.iter_mut().enumerate() {
            let (correct, total) = (self.correct[n], self.total[n]);
            if total == 0 {
                break;
            }
            if effective_order {
                order = n + 1;
            }
            *precision = if correct == 0 {
                smooth *= 2.0;
                1.0 / (smooth * total as f64)
            } else {
                correct as f64 / total as f64
            };
        }
        let log_sum: f64 = precisions[..order]
            .iter()
            .map(|&p| if p == 0.0 { f64::NEG_INFINITY } else { p.ln() })
            .sum();
        let brevity = if self.candidate_len == 0 {
            0.0
        } else if self.candidate_len < self.reference_len {
            (1.0 - self.reference_len as f64 / self.candidate_len as f64).exp()
        } else {
            1.0
        };
        (brevity * (log_sum / order as f64).exp()).clamp(0.0, 1.0)
    }
}

/// Sentence BLEU of one candidate against one reference, in [0, 1] (`sacrebleu.sentence_bleu`
/// on the tokens of [`tokenize`]).
pub fn sentence_bleu(candidate: &str, reference: &str) -> f64 {
    BleuStats::of(&tokenize(candidate), &tokenize(reference)).score(true)
}

/// Corpus BLEU-4 of candidates against their references (pairs), in [0, 1]: n-gram counts are
/// summed over the corpus before the precisions are taken (`sacrebleu.corpus_bleu`).
pub fn corpus_bleu<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let mut stats = BleuStats::default();
    for (candidate, reference) in pairs {
        stats.add(&BleuStats::of(&tokenize(candidate), &tokenize(reference)));
    }
    stats.score(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference numbers from rouge-score 0.1.2 and sacrebleu 2.6.0 (pip), computed as
    //   RougeScorer(['rougeL']).score(reference, candidate)['rougeL'].fmeasure
    //   sacrebleu.sentence_bleu(' '.join(tokenize(c)), [' '.join(tokenize(r))], tokenize='none')
    //   sacrebleu.corpus_bleu(candidates, [references], tokenize='none')
    // with rouge_score.tokenize.tokenize as the tokenizer, scores divided by 100.
    const PAIRS: [(&str, &str, f64, f64); 5] = [
        ("the cat sat on the mat", "the cat is on the mat", 0.8333333333, 0.3799178428),
        (
            "police killed the gunman",
            "the gunman was shot down by police",
            0.3636363636,
            0.1670067963,
        ),
        (
            // Papineni et al. (2002), candidate 1 against the first reference.
            "It is a guide to action which ensures that the military always obeys the commands of the party",
            "It is a guide to action that ensures that the military will forever heed Party commands",
            0.6470588235,
            0.4208598070,
        ),
        ("a b c", "d e f", 0.0, 0.0),
        ("hello world", "hello world", 1.0, 1.0),
    ];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rouge_l_matches_rouge_score() {
        for (c, r, rouge, _) in PAIRS {
            assert!(close(rouge_l(c, r), rouge), "{c} / {r}: {}", rouge_l(c, r));
        }
    }

    #[test]
    fn sentence_bleu_matches_sacrebleu() {
        for (c, r, _, bleu) in PAIRS {
            let got = sentence_bleu(c, r);
            assert!(close(got, bleu), "{c} / {r}: {got}");
        }
    }

    #[test]
    fn corpus_bleu_matches_sacrebleu() {
        let all = PAIRS.iter().map(|(c, r, ..)| (*c, *r));
        assert!(close(corpus_bleu(all), 0.36406776294353704));
        let first3 = PAIRS.iter().take(3).map(|(c, r, ..)| (*c, *r));
        assert!(close(corpus_bleu(first3), 0.37563255181581773));
        // Too short to have trigrams: the corpus score has no effective order, so it is 0.
        assert_eq!(corpus_bleu([("the cat", "the cat sat on the mat")]), 0.0);
    }

    #[test]
    fn identical_text_scores_one_and_empty_text_zero() {
        let text = "Paris is the capital of France, and it is lovely.";
        assert_eq!(rouge_l(text, text), 1.0);
        assert!(close(sentence_bleu(text, text), 1.0));
        assert!(close(corpus_bleu([(text, text)]), 1.0));
        assert_eq!(rouge_l("", text), 0.0);
        assert_eq!(sentence_bleu("", text), 0.0);
        assert_eq!(corpus_bleu([("", text)]), 0.0);
    }

    #[test]
    fn tokens_are_lowercased_words() {
        assert_eq!(
            tokenize("Hi, World! it's 2x"),
            ["hi", "world", "it", "s", "2x"]
        );
        assert_eq!(tokenize("Ça va"), ["ça", "va"]);
    }
}
