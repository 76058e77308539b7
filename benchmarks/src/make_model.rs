//! `genrt-make-model`: writes a llama-architecture GGUF with the SmolLM2 tokenizer and random
//! weights at a chosen size (see `synth.rs`), or the tokenizer alone to carry to a machine
//! that has no model. `benchmarks/gpu/run.sh` makes its ~1B test model with it. It also writes
//! a random LoRA adapter for any llama model, and a base with adapters merged into it: the
//! model an adapter applied at run time must behave like.
//!
//!   genrt-make-model --tokenizer models/SmolLM2-135M-Instruct.Q4_1.gguf --vocab-only --out vocab.gguf
//!   genrt-make-model --tokenizer vocab.gguf --out synthetic-1b.gguf            # 1.2B, Q4_0
//!   genrt-make-model --lora-of base.gguf --rank 8 --alpha 16 --targets attn_q,attn_v --out lora.gguf
//!   genrt-make-model --merge-into base.gguf --adapter lora.gguf --adapter other.gguf:0.5 --out merged.gguf

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use genrt_benchmarks::synth::{self, LoraSpec, Shape, WeightType};

#[derive(Parser)]
struct Args {
    /// A llama-architecture GGUF whose tokenizer (and chat template) the model gets.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Write the tokenizer alone (no tensors).
    #[arg(long)]
    vocab_only: bool,
    #[arg(long, value_enum, default_value = "q4-0")]
    r#type: WeightType,
    #[arg(long, default_value_t = Shape::ONE_B.n_embd)]
    n_embd: u32,
    #[arg(long, default_value_t = Shape::ONE_B.n_layer)]
    n_layer: u32,
    #[arg(long, default_value_t = Shape::ONE_B.n_ff)]
    n_ff: u32,
    #[arg(long, default_value_t = Shape::ONE_B.n_head)]
    n_head: u32,
    #[arg(long, default_value_t = Shape::ONE_B.n_head_kv)]
    n_head_kv: u32,
    /// Seeds the weights, or the adapter's values with `--lora-of`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a random LoRA adapter for this llama-architecture model (quantized or not)
    /// instead of a model.
    #[arg(long, conflicts_with_all = ["merge_into", "vocab_only"])]
    lora_of: Option<PathBuf>,
    /// The adapter's rank (with `--lora-of`).
    #[arg(long, default_value_t = 8)]
    rank: u32,
    /// `adapter.lora.alpha`: the update is scaled by alpha / rank (with `--lora-of`).
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// The weights adapted in every layer (with `--lora-of`).
    #[arg(long, value_delimiter = ',', default_value = "attn_q,attn_v",
          value_parser = clap::builder::PossibleValuesParser::new(synth::LORA_TARGETS))]
    targets: Vec<String>,
    /// The standard deviation of each entry of the update (alpha/rank)·B·A (with `--lora-of`);
    /// the synthetic models' weights have 0.02.
    #[arg(long, default_value_t = 0.01)]
    magnitude: f32,
    /// Write this F32 or F16 llama model with the `--adapter`s merged into its weights.
    #[arg(long, requires = "adapter", conflicts_with = "vocab_only")]
    merge_into: Option<PathBuf>,
    /// An adapter to merge, as `path` or `path:scale` (scale 1 by default); repeatable.
    #[arg(long, requires = "merge_into", value_parser = parse_adapter)]
    adapter: Vec<(PathBuf, f32)>,
}

/// `path` or `path:scale`; a path that itself contains a colon is taken whole unless what
/// follows its last colon is a number.
fn parse_adapter(arg: &str) -> Result<(PathBuf, f32), String> {
    match arg.rsplit_once(':') {
        Some((path, scale)) if !path.is_empty() => match scale.parse::<f32>() {
            Ok(scale) if scale.is_finite() => Ok((path.into(), scale)),
            Ok(_) => Err(format!("scale {scale} is not finite")),
            Err(_) => Ok((arg.into(), 1.0)),
        },
        _ => Ok((arg.into(), 1.0)),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    if let Some(base) = &args.lora_of {
        let spec = LoraSpec {
            rank: args.rank,
            alpha: args.alpha,
            targets: args.targets.clone(),
            seed: args.seed,
            magnitude: args.magnitude,
        };
        let bytes = synth::write_lora(base, &args.out, &spec)?;
        println!(
            "wrote {} ({:.1} MiB, LoRA of {}: rank {}, alpha {}, {}, magnitude {}) in {:.1} s",
            args.out.display(),
            mib(bytes),
            base.display(),
            spec.rank,
            spec.alpha,
            spec.targets.join(","),
            spec.magnitude,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if let Some(base) = &args.merge_into {
        let adapters: Vec<(&Path, f32)> = args
            .adapter
            .iter()
            .map(|(path, scale)| (path.as_path(), *scale))
            .collect();
        let bytes = synth::write_merged(base, &adapters, &args.out)?;
        println!(
            "wrote {} ({:.1} MiB, {} with {} merged) in {:.1} s",
            args.out.display(),
            mib(bytes),
            base.display(),
            adapters
                .iter()
                .map(|(path, scale)| format!("{}×{scale}", path.display()))
                .collect::<Vec<_>>()
                .join(" + "),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    let shape = Shape {
        n_embd: args.n_embd,
        n_layer: args.n_layer,
        n_ff: args.n_ff,
        n_head: args.n_head,
        n_head_kv: args.n_head_kv,
    };
    let bytes = synth::write_model(
        &args.tokenizer,
        &args.out,
        shape,
        args.r#type,
        args.seed,
        args.vocab_only,
    )?;
    println!(
        "wrote {} ({:.1} MiB{}) in {:.1} s",
        args.out.display(),
        mib(bytes),
        if args.vocab_only {
            ", tokenizer only".to_string()
        } else {
            format!(", {shape:?}, {:?}", args.r#type)
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
