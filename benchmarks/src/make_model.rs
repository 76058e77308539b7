//! `genrt-make-model`: writes a llama-architecture GGUF with the SmolLM2 tokenizer and random
//! weights at a chosen size (see `synth.rs`), or the tokenizer alone to carry to a machine
//! that has no model. `benchmarks/gpu/run.sh` makes its ~1B test model with it.
//!
//!   genrt-make-model --tokenizer models/SmolLM2-135M-Instruct.Q4_1.gguf --vocab-only --out vocab.gguf
//!   genrt-make-model --tokenizer vocab.gguf --out synthetic-1b.gguf            # 1.2B, Q4_0

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use genrt_benchmarks::synth::{self, Shape, WeightType};

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
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shape = Shape {
        n_embd: args.n_embd,
        n_layer: args.n_layer,
        n_ff: args.n_ff,
        n_head: args.n_head,
        n_head_kv: args.n_head_kv,
    };
    let started = Instant::now();
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
        bytes as f64 / (1 << 20) as f64,
        if args.vocab_only {
            ", tokenizer only".to_string()
        } else {
            format!(", {shape:?}, {:?}", args.r#type)
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
