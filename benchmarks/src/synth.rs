//! A llama-architecture GGUF with a real tokenizer and random weights, at any size: a model
//! that needs no download (the GPU benchmark's machine has no network, and only 64 MiB of
//! files travel to it) yet loads, tokenizes and decodes through llama.cpp exactly as a
//! trained model of that shape would, which is all a speed benchmark needs.
//!
//! The tokenizer and chat template are copied, key for key, from another GGUF (the SmolLM2
//! model, or a vocabulary-only file made from it with `vocab_only`); the shape keys are then
//! overwritten. Written through ggml's own GGUF API (`gguf_set_kv`, `gguf_add_tensor`,
//! `gguf_get_meta_data`) so that the file is what llama.cpp itself would write; the tensor
//! data is generated and streamed here, since a 1B model does not fit a ggml context cheaply.
//!
//! It also writes LoRA adapters for any llama model ([`write_lora`], the file that
//! `convert_lora_to_gguf.py` would write for a trained adapter of that shape) and a base with
//! adapters merged offline ([`write_merged`]), so that adapters can be tested and benchmarked
//! without a trained one: the merged model is the reference that an adapter applied at run time
//! must reproduce.

use std::ffi::CString;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use genrt_actors::engine::gguf::GgufHeader;
use llama_cpp_sys_2 as sys;

mod lora;

pub use lora::{write_lora, write_merged, LoraSpec, LORA_TARGETS};

/// Weight formats the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightType {
    /// Full precision: a base that LoRA adapters can be merged into without rounding to a
    /// quantisation grid, so that merged and run-time adapters compare to float tolerance.
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl WeightType {
    fn ggml(self) -> sys::ggml_type {
        match self {
            Self::F32 => sys::GGML_TYPE_F32,
            Self::F16 => sys::GGML_TYPE_F16,
            Self::Q8_0 => sys::GGML_TYPE_Q8_0,
            Self::Q4_0 => sys::GGML_TYPE_Q4_0,
        }
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
        }
    }
}

/// The model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
}

impl Shape {
    /// About 1.2 billion parameters with SmolLM2's 49 152-token vocabulary (the embedding is
    /// tied to the output, as in SmolLM2): SmolLM2-1.7B's widths with 16 layers.
    pub const ONE_B: Self = Self {
        n_embd: 2048,
        n_layer: 16,
        n_ff: 8192,
        n_head: 32,
        n_head_kv: 32,
    };

    pub fn parameters(&self, n_vocab: u64) -> u64 {
        let (e, f) = (u64::from(self.n_embd), u64::from(self.n_ff));
        let kv = e / u64::from(self.n_head) * u64::from(self.n_head_kv);
        let layer = e * e * 2 + e * kv * 2 + e * f * 3 + e * 2;
        n_vocab * e + u64::from(self.n_layer) * layer + e
    }
}

/// Owns a gguf context being written.
struct Gguf(*mut sys::gguf_context);

impl Drop for Gguf {
    fn drop(&mut self) {
        unsafe { sys::gguf_free(self.0) }
    }
}

/// Owns a ggml context (tensor descriptions only; no data is allocated in it).
struct Ggml(*mut sys::ggml_context);

impl Drop for Ggml {
    fn drop(&mut self) {
        unsafe { sys::ggml_free(self.0) }
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a key")
}

/// xorshift64*: the weights only need to look random to the hardware, and a seeded generator
/// makes the file reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

fn f16_bits(x: f32) -> [u8; 2] {
    unsafe { sys::ggml_fp32_to_fp16(x) }.to_le_bytes()
}

/// Random data for `n` values of `ty`, standard deviation about 0.02 (what initialisers use),
/// so that activations stay in range and decoding runs the same kernels as on a real model.
fn weights(rng: &mut Rng, ty: WeightType, n: usize, out: &mut Vec<u8>) {
    out.clear();
    match ty {
        WeightType::F32 => {
            let mut raw = vec![0u8; n * 4];
            rng.fill(&mut raw);
            for quad in raw.chunks(4) {
                let u = f64::from(u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]))
                    / f64::from(u32::MAX);
                out.extend_from_slice(&(((u * 2.0 - 1.0) * 0.0346) as f32).to_le_bytes());
            }
        }
        WeightType::F16 => {
            let mut raw = vec![0u8; n * 2];
            rng.fill(&mut raw);
            for pair in raw.chunks(2) {
                // Uniform on ±0.0346 has a standard deviation of 0.02.
                let u = f32::from(u16::from_le_bytes([pair[0], pair[1]])) / 65535.0;
                out.extend_from_slice(&f16_bits((u * 2.0 - 1.0) * 0.0346));
            }
        }
        WeightType::Q8_0 | WeightType::Q4_0 => {
            // Blocks of 32 values: an f16 scale, then the quants: 32 signed bytes (Q8_0:
            // uniform, sd ≈ 73.9 × scale) or 16 bytes of 4-bit q read as (q − 8) × scale
            // (Q4_0: uniform over 16 levels, sd ≈ 4.61 × scale).
            let (quant_bytes, sd_per_scale) = match ty {
                WeightType::Q8_0 => (32, 73.9),
                _ => (16, 4.61),
            };
            let scale = f16_bits(0.02 / sd_per_scale);
            let mut qs = vec![0u8; quant_bytes];
            for _ in 0..n / 32 {
                out.extend_from_slice(&scale);
                rng.fill(&mut qs);
                out.extend_from_slice(&qs);
            }
        }
    }
}

struct Tensor {
    name: String,
    ne: [i64; 2],
    ty: Option<WeightType>,
}

/// Writes a model of `shape` with `tokenizer`'s vocabulary to `out`; with `vocab_only`, the
/// tokenizer file alone (every key of `tokenizer`, no tensors), a few MiB to carry elsewhere.
pub fn write_model(
    tokenizer: &Path,
    out: &Path,
    shape: Shape,
    ty: WeightType,
    seed: u64,
    vocab_only: bool,
) -> anyhow::Result<u64> {
    let src = GgufHeader::open(tokenizer)
        .map_err(anyhow::Error::msg)
        .with_context(|| tokenizer.display().to_string())?;
    let arch = src
        .str("general.architecture")
        .map_err(anyhow::Error::msg)?;
    if arch != "llama" {
        bail!(
            "{}: architecture {arch}; a llama-architecture tokenizer source is needed",
            tokenizer.display()
        );
    }
    let n_vocab = src
        .array_len("tokenizer.ggml.tokens")
        .map_err(anyhow::Error::msg)?;
    for (what, v) in [("n_embd", shape.n_embd), ("n_ff", shape.n_ff)] {
        ensure!(
            v.is_multiple_of(32),
            "{what} must be a multiple of 32 (the quantisation block)"
        );
    }
    ensure!(
        shape.n_head > 0
            && shape.n_embd.is_multiple_of(shape.n_head)
            && shape.n_head.is_multiple_of(shape.n_head_kv.max(1)),
        "n_embd must divide into n_head heads, and n_head into n_head_kv groups"
    );
    let dst = Gguf(unsafe { sys::gguf_init_empty() });
    unsafe { sys::gguf_set_kv(dst.0, src.as_ptr()) };
    let set_u32 =
        |key: &str, v: u32| unsafe { sys::gguf_set_val_u32(dst.0, cstr(key).as_ptr(), v) };
    let head_dim = shape.n_embd / shape.n_head;
    if !vocab_only {
        set_u32("llama.embedding_length", shape.n_embd);
        set_u32("llama.block_count", shape.n_layer);
        set_u32("llama.feed_forward_length", shape.n_ff);
        set_u32("llama.attention.head_count", shape.n_head);
        set_u32("llama.attention.head_count_kv", shape.n_head_kv);
        set_u32("llama.rope.dimension_count", head_dim);
        set_u32("general.file_type", ty.file_type());
        set_u32("general.quantization_version", 2);
        let name = format!(
            "genrt synthetic {:.2}B ({:?}, random weights, SmolLM2 tokenizer)",
            shape.parameters(n_vocab) as f64 / 1e9,
            ty
        );
        unsafe {
            sys::gguf_set_val_str(dst.0, cstr("general.name").as_ptr(), cstr(&name).as_ptr())
        };
    }

    let (e, f) = (i64::from(shape.n_embd), i64::from(shape.n_ff));
    let kv = i64::from(head_dim * shape.n_head_kv);
    let mut tensors = Vec::new();
    if !vocab_only {
        let t = |name: String, ne: [i64; 2], ty: Option<WeightType>| Tensor { name, ne, ty };
        tensors.push(t("token_embd.weight".into(), [e, n_vocab as i64], Some(ty)));
        tensors.push(t("output_norm.weight".into(), [e, 1], None));
        for l in 0..shape.n_layer {
            let b = |s: &str| format!("blk.{l}.{s}.weight");
            tensors.push(t(b("attn_norm"), [e, 1], None));
            tensors.push(t(b("attn_q"), [e, e], Some(ty)));
            tensors.push(t(b("attn_k"), [e, kv], Some(ty)));
            tensors.push(t(b("attn_v"), [e, kv], Some(ty)));
            tensors.push(t(b("attn_output"), [e, e], Some(ty)));
            tensors.push(t(b("ffn_norm"), [e, 1], None));
            tensors.push(t(b("ffn_gate"), [e, f], Some(ty)));
            tensors.push(t(b("ffn_up"), [e, f], Some(ty)));
            tensors.push(t(b("ffn_down"), [f, e], Some(ty)));
        }
    }
    let described: Vec<TensorDesc> = tensors
        .iter()
        .map(|t| TensorDesc {
            name: t.name.clone(),
            ty: t.ty.map_or(sys::GGML_TYPE_F32, WeightType::ggml),
            ne: [t.ne[0], t.ne[1], 1, 1],
        })
        .collect();
    let mut rng = Rng(seed.max(1));
    let mut buf = Vec::new();
    write_gguf(&dst, &described, out, |i, file| {
        let t = &tensors[i];
        let n = (t.ne[0] * t.ne[1]) as usize;
        match t.ty {
            // Norm weights of 1: the layer passes its normalised input on unscaled.
            None => {
                buf.clear();
                for _ in 0..n {
                    buf.extend_from_slice(&1.0f32.to_le_bytes());
                }
                file.write_all(&buf)?;
            }
            // Row by row, so that memory stays small whatever the model's size.
            Some(ty) => {
                let (row, rows) = (t.ne[0] as usize, t.ne[1] as usize);
                for _ in 0..rows {
                    weights(&mut rng, ty, row, &mut buf);
                    file.write_all(&buf)?;
                }
            }
        }
        Ok(())
    })
}

/// A tensor as the GGUF header describes it.
#[derive(Clone)]
struct TensorDesc {
    name: String,
    ty: sys::ggml_type,
    /// ggml's order: `ne[0]` is the row length (a weight's input width).
    ne: [i64; 4],
}

impl TensorDesc {
    fn elements(&self) -> usize {
        self.ne.iter().product::<i64>() as usize
    }
}

/// Counts what passes through, so that a tensor whose data is shorter or longer than its header
/// says is caught here rather than as a shifted, silently wrong model.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Sink = Counted<BufWriter<std::fs::File>>;

/// Writes `dst`'s keys with `tensors` to `out`, each tensor's data as `data(index, file)` writes
/// it, padded to the file's alignment; returns the file's size. The data is streamed rather than
/// set on the context, since a 1B model does not fit a ggml context cheaply.
fn write_gguf(
    dst: &Gguf,
    tensors: &[TensorDesc],
    out: &Path,
    mut data: impl FnMut(usize, &mut Sink) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let alignment = unsafe { sys::gguf_get_alignment(dst.0) };
    // `gguf_set_kv` copies a source's `general.alignment` key but not the alignment the
    // context lays tensors out with, so a file from such a source would be read at the
    // wrong offsets.
    let key = unsafe { sys::gguf_find_key(dst.0, cstr("general.alignment").as_ptr()) };
    if key >= 0 {
        let declared = unsafe { sys::gguf_get_val_u32(dst.0, key) };
        ensure!(
            declared as usize == alignment,
            "general.alignment {declared} is not supported (ggml writes {alignment})"
        );
    }
    let ggml = Ggml(unsafe {
        sys::ggml_init(sys::ggml_init_params {
            mem_size: (tensors.len() + 1) * sys::ggml_tensor_overhead(),
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        })
    });
    ensure!(!ggml.0.is_null(), "ggml_init failed");
    let mut sizes = Vec::new();
    for t in tensors {
        let tensor = unsafe { sys::ggml_new_tensor(ggml.0, t.ty, 4, t.ne.as_ptr()) };
        ensure!(!tensor.is_null(), "cannot describe {}", t.name);
        unsafe {
            sys::ggml_set_name(tensor, cstr(&t.name).as_ptr());
            // ggml truncates a name to its fixed buffer.
            ensure!(
                std::ffi::CStr::from_ptr(sys::ggml_get_name(tensor)).to_bytes()
                    == t.name.as_bytes(),
                "tensor name {} is too long for ggml",
                t.name
            );
            sys::gguf_add_tensor(dst.0, tensor);
            sizes.push(sys::ggml_nbytes(tensor) as u64);
        }
    }

    let mut file = Counted {
        inner: BufWriter::with_capacity(
            8 << 20,
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
        ),
        bytes: 0,
    };
    let meta_size = unsafe { sys::gguf_get_meta_size(dst.0) };
    let mut meta = vec![0u8; meta_size];
    unsafe { sys::gguf_get_meta_data(dst.0, meta.as_mut_ptr().cast()) };
    file.write_all(&meta)?;
    let alignment = alignment as u64;
    for (i, (t, size)) in tensors.iter().zip(sizes).enumerate() {
        let start = file.bytes;
        data(i, &mut file)?;
        ensure!(
            file.bytes - start == size,
            "{}: {} bytes of data for a tensor of {size}",
            t.name,
            file.bytes - start
        );
        let padded = size.div_ceil(alignment) * alignment;
        file.write_all(&vec![0u8; (padded - size) as usize])?;
    }
    file.flush()?;
    Ok(file.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::sampling::LlamaSampler;

    fn smollm2() -> std::path::PathBuf {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.is_file(),
            "{} is missing: run `make model`",
            path.display()
        );
        path
    }

    /// A small model through the vocabulary-only file, as the GPU benchmark makes its 1B one:
    /// llama.cpp loads it, sees the requested shape, tokenizes exactly as SmolLM2 does, and
    /// decodes.
    #[test]
    fn a_random_model_with_the_smollm2_tokenizer_loads_tokenizes_and_decodes() {
        let dir = std::env::temp_dir().join(format!("genrt-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vocab = dir.join("vocab.gguf");
        let vocab_bytes =
            write_model(&smollm2(), &vocab, Shape::ONE_B, WeightType::Q4_0, 1, true).unwrap();
        assert!(
            vocab_bytes < 8 << 20,
            "vocabulary file of {vocab_bytes} bytes"
        );
        let shape = Shape {
            n_embd: 128,
            n_layer: 3,
            n_ff: 256,
            n_head: 4,
            n_head_kv: 2,
        };
        let backend = genrt_actors::llama_backend().unwrap();
        let reference = LlamaModel::load_from_file(
            &backend,
            smollm2(),
            &LlamaModelParams::default().with_vocab_only(true),
        )
        .unwrap();
        let text = "Write a long story about lanterns, in the style of a sea shanty.";
        let expected = reference.vocab().tokenize(text.as_bytes(), true, true);
        for ty in [
            WeightType::Q4_0,
            WeightType::Q8_0,
            WeightType::F16,
            WeightType::F32,
        ] {
            let path = dir.join(format!("model-{ty:?}.gguf"));
            let bytes = write_model(&vocab, &path, shape, ty, 7, false).unwrap();
            assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
            let model =
                LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default()).unwrap();
            assert_eq!(model.n_layer(), 3);
            assert_eq!(model.n_embd(), 128);
            assert_eq!(model.n_head_kv(), 2);
            assert_eq!(model.n_vocab(), reference.n_vocab());
            assert_eq!(model.n_params(), shape.parameters(model.n_vocab() as u64));
            assert!(!expected.is_empty());
            assert!(
                model.chat_template(None).is_ok(),
                "the chat template travels too"
            );
            let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
            assert_eq!(
                tokens, expected,
                "{ty:?}: tokenization differs from SmolLM2's"
            );

            let params = llama_cpp_2::context::params::LlamaContextParams::default()
                .with_n_ctx(std::num::NonZeroU32::new(256))
                .with_n_threads(1)
                .with_n_threads_batch(1);
            let mut ctx = model.new_context(&backend, params).unwrap();
            let mut batch = LlamaBatch::new(256, 1);
            batch.add_sequence(&tokens, 0, false).unwrap();
            ctx.decode(&mut batch).unwrap();
            let mut sampler = LlamaSampler::greedy();
            for pos in tokens.len() as i32..tokens.len() as i32 + 8 {
                let next = sampler.sample(&ctx, batch.n_tokens() - 1);
                assert!(
                    (0..model.n_vocab()).contains(&next.0),
                    "{ty:?}: token {next:?}"
                );
                batch.clear();
                batch.add(next, pos, &[0], true).unwrap();
                ctx.decode(&mut batch).unwrap();
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The LoRA tests' base: every weight in F32, so that an adapter merged into it offline
    /// differs from one applied at run time by float rounding alone; small enough that each
    /// test runs in about a second.
    const TINY: Shape = Shape {
        n_embd: 128,
        n_layer: 3,
        n_ff: 256,
        n_head: 4,
        n_head_kv: 2,
    };

    const PROMPT: &str = "Write a long story about lanterns, in the style of a sea shanty.";

    /// Greedy tokens compared after the prompt.
    const GREEDY_STEPS: usize = 24;

    /// The largest logit difference allowed between an adapter applied at run time and the same
    /// adapter merged offline, as a fraction of the logits' spread (max − min) at that position.
    /// The two compute W·x + s·B·(A·x) and W'·x in f32 in a different order: W' is rounded to
    /// f32 once (2⁻²⁴ relative) and each dot product of at most 256 terms sums in another
    /// order. Measured: 1–2e-7 of the spread, with three layers and every weight adapted. An
    /// error in the update itself (a transposed A, a missed alpha/rank, a skipped layer) moves
    /// the logits by about the adapter's own effect (0.3 to 0.5 of the spread here), which the
    /// tests require to be at least 1000 times this.
    const TOLERANCE: f64 = 1e-5;

    /// A test's own directory, removed when the test ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("genrt-synth-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tiny_model(dir: &TempDir, name: &str, shape: Shape, ty: WeightType) -> PathBuf {
        let path = dir.path(name);
        write_model(&smollm2(), &path, shape, ty, 7, false).unwrap();
        path
    }

    fn lora(dir: &TempDir, name: &str, base: &Path, spec: &LoraSpec) -> PathBuf {
        let path = dir.path(name);
        let bytes = write_lora(base, &path, spec).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        path
    }

    fn spec(rank: u32, alpha: f32, targets: &[&str], seed: u64) -> LoraSpec {
        LoraSpec {
            rank,
            alpha,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            seed,
            magnitude: 0.01,
        }
    }

    /// What a test reads from one model: the logits at every position of the prompt, and the
    /// greedy continuation.
    #[derive(Debug, PartialEq)]
    struct Run {
        prompt_logits: Vec<Vec<f32>>,
        greedy: Vec<i32>,
    }

    /// One context, through llama-cpp-2 or through llama.cpp's C API directly.
    trait Decoder {
        /// Decodes `tokens` at the positions from `first` on, with logits for every one.
        fn decode(&mut self, tokens: &[i32], first: i32);
        /// The logits of the `i`-th token of the last batch.
        fn logits(&self, i: usize) -> &[f32];
    }

    /// The first of the largest: the same rule whichever decoder produced the logits.
    fn argmax(logits: &[f32]) -> i32 {
        let mut best = 0;
        for (i, l) in logits.iter().enumerate() {
            if *l > logits[best] {
                best = i;
            }
        }
        best as i32
    }

    fn run(decoder: &mut impl Decoder, prompt: &[i32]) -> Run {
        decoder.decode(prompt, 0);
        let prompt_logits = (0..prompt.len())
            .map(|i| decoder.logits(i).to_vec())
            .collect();
        let mut next = argmax(decoder.logits(prompt.len() - 1));
        let mut greedy = Vec::new();
        for pos in prompt.len()..prompt.len() + GREEDY_STEPS {
            greedy.push(next);
            decoder.decode(&[next], pos as i32);
            next = argmax(decoder.logits(0));
        }
        Run {
            prompt_logits,
            greedy,
        }
    }

    /// `adapted` (adapters applied at run time) matches `offline` (merged into the weights)
    /// within float tolerance, greedy output included, while differing clearly from `without`
    /// (what `what` adds is missing there), so that the comparison can fail.
    fn matches_merged(adapted: &Run, offline: &Run, without: &Run, what: &str) {
        let difference = relative_difference(offline, adapted);
        let effect = relative_difference(without, adapted);
        eprintln!("run time vs merged: {difference:.2e}; effect of {what}: {effect:.2e}");
        assert!(
            difference <= TOLERANCE,
            "run time vs merged: {difference:e}"
        );
        assert_eq!(adapted.greedy, offline.greedy);
        assert!(
            effect >= 1000.0 * TOLERANCE,
            "{what} changes little: {effect:e}"
        );
    }

    /// The largest difference between two runs' prompt logits, as a fraction of the spread of
    /// `reference`'s logits at that position.
    fn relative_difference(reference: &Run, other: &Run) -> f64 {
        let mut worst = 0f64;
        for (r, o) in reference.prompt_logits.iter().zip(&other.prompt_logits) {
            let max = r.iter().copied().fold(f32::MIN, f32::max);
            let min = r.iter().copied().fold(f32::MAX, f32::min);
            let spread = f64::from(max - min);
            assert!(spread > 0.0, "flat logits");
            for (a, b) in r.iter().zip(o) {
                worst = worst.max(f64::from(a - b).abs() / spread);
            }
        }
        worst
    }

    /// On the CPU, whose kernels these tolerances were measured with. Contexts keep the KV
    /// cache in F32 and do without flash attention, before which llama.cpp casts keys and values
    /// to F16 even from an F32 cache (`build_attn_mha`): where the two sides' keys differ by
    /// 1e-7, one may round to the next half-precision value, and that moved the comparison by
    /// up to 9e-5 of the logits' spread (measured), hiding the 1e-7 it is about.
    fn cpu() -> LlamaModelParams {
        LlamaModelParams::default().with_n_gpu_layers(0)
    }

    struct SafeDecoder<'m> {
        ctx: llama_cpp_2::context::LlamaContext<'m>,
        batch: LlamaBatch<'static>,
    }

    impl<'m> SafeDecoder<'m> {
        fn new(model: &'m LlamaModel, backend: &llama_cpp_2::llama_backend::LlamaBackend) -> Self {
            use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
            let params = LlamaContextParams::default()
                .with_n_ctx(std::num::NonZeroU32::new(256))
                .with_flash_attention_policy(sys::LLAMA_FLASH_ATTN_TYPE_DISABLED)
                .with_type_k(KvCacheType::F32)
                .with_type_v(KvCacheType::F32)
                .with_n_threads(1)
                .with_n_threads_batch(1);
            Self {
                ctx: model.new_context(backend, params).unwrap(),
                batch: LlamaBatch::new(256, 1),
            }
        }
    }

    impl Decoder for SafeDecoder<'_> {
        fn decode(&mut self, tokens: &[i32], first: i32) {
            self.batch.clear();
            for (pos, t) in (first..).zip(tokens) {
                self.batch
                    .add(llama_cpp_2::token::LlamaToken(*t), pos, &[0], true)
                    .unwrap();
            }
            self.ctx.decode(&mut self.batch).unwrap();
        }

        fn logits(&self, i: usize) -> &[f32] {
            self.ctx.get_logits_ith(i as i32)
        }
    }

    /// A model and context through llama.cpp's C API: llama-cpp-2 sets one adapter at a time
    /// and exposes no context pointer to pass `llama_set_adapters_lora` several.
    struct RawDecoder {
        model: *mut sys::llama_model,
        ctx: *mut sys::llama_context,
        batch: sys::llama_batch,
        n_vocab: usize,
    }

    impl RawDecoder {
        fn new(path: &Path, adapters: &[(&Path, f32)]) -> Self {
            unsafe {
                let mut params = sys::llama_model_default_params();
                params.n_gpu_layers = 0;
                let name = cstr(path.to_str().unwrap());
                let model = sys::llama_model_load_from_file(name.as_ptr(), params);
                assert!(!model.is_null(), "cannot load {}", path.display());
                // Freed with the model.
                let mut loras: Vec<_> = adapters
                    .iter()
                    .map(|(path, _)| {
                        let name = cstr(path.to_str().unwrap());
                        let lora = sys::llama_adapter_lora_init(model, name.as_ptr());
                        assert!(!lora.is_null(), "cannot load {}", path.display());
                        lora
                    })
                    .collect();
                let mut scales: Vec<f32> = adapters.iter().map(|(_, s)| *s).collect();
                let mut cparams = sys::llama_context_default_params();
                cparams.n_ctx = 256;
                cparams.type_k = sys::GGML_TYPE_F32;
                cparams.type_v = sys::GGML_TYPE_F32;
                cparams.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
                cparams.n_threads = 1;
                cparams.n_threads_batch = 1;
                let ctx = sys::llama_init_from_model(model, cparams);
                assert!(!ctx.is_null());
                let rc = sys::llama_set_adapters_lora(
                    ctx,
                    loras.as_mut_ptr(),
                    loras.len(),
                    scales.as_mut_ptr(),
                );
                assert_eq!(rc, 0);
                let n_vocab = sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model));
                Self {
                    model,
                    ctx,
                    batch: sys::llama_batch_init(256, 0, 1),
                    n_vocab: n_vocab as usize,
                }
            }
        }
    }

    impl Drop for RawDecoder {
        fn drop(&mut self) {
            unsafe {
                sys::llama_batch_free(self.batch);
                sys::llama_free(self.ctx);
                sys::llama_model_free(self.model);
            }
        }
    }

    impl Decoder for RawDecoder {
        fn decode(&mut self, tokens: &[i32], first: i32) {
            assert!(tokens.len() <= 256);
            unsafe {
                let b = &mut self.batch;
                for (i, (pos, t)) in (first..).zip(tokens).enumerate() {
                    *b.token.add(i) = *t;
                    *b.pos.add(i) = pos;
                    *b.n_seq_id.add(i) = 1;
                    **b.seq_id.add(i) = 0;
                    *b.logits.add(i) = 1;
                }
                b.n_tokens = tokens.len() as i32;
                assert_eq!(sys::llama_decode(self.ctx, self.batch), 0);
            }
        }

        fn logits(&self, i: usize) -> &[f32] {
            unsafe {
                let data = sys::llama_get_logits_ith(self.ctx, i as i32);
                assert!(!data.is_null());
                std::slice::from_raw_parts(data, self.n_vocab)
            }
        }
    }

    fn prompt(model: &LlamaModel) -> Vec<i32> {
        model
            .vocab()
            .tokenize(PROMPT.as_bytes(), true, true)
            .iter()
            .map(|t| t.0)
            .collect()
    }

    /// The header and every untargeted tensor of `merged` are `base`'s bytes; every targeted
    /// tensor differs.
    fn assert_copied_but_targets(base: &Path, merged: &Path, targets: &[&str]) {
        let (b, m) = (std::fs::read(base).unwrap(), std::fs::read(merged).unwrap());
        assert_eq!(b.len(), m.len());
        let header = GgufHeader::open(base).unwrap();
        let tensors = lora::stored_tensors(&header);
        let data = tensors[0].offset as usize;
        assert_eq!(b[..data], m[..data], "keys and tensor descriptions");
        for t in &tensors {
            let range = t.offset as usize..(t.offset + t.size) as usize;
            let targeted = targets
                .iter()
                .any(|x| t.desc.name.ends_with(&format!(".{x}.weight")));
            assert_eq!(
                b[range.clone()] != m[range],
                targeted,
                "{}: changed only if targeted",
                t.desc.name
            );
        }
    }

    #[test]
    fn an_adapter_at_run_time_matches_it_merged_offline() {
        let dir = TempDir::new("lora-one");
        let base = tiny_model(&dir, "base.gguf", TINY, WeightType::F32);
        let spec = spec(8, 16.0, &LORA_TARGETS, 11);
        let adapter = lora(&dir, "lora.gguf", &base, &spec);
        let merged = dir.path("merged.gguf");
        write_merged(&base, &[(&adapter, 1.0)], &merged).unwrap();
        assert_copied_but_targets(&base, &merged, &LORA_TARGETS);

        let backend = genrt_actors::llama_backend().unwrap();
        let mut model = LlamaModel::load_from_file(&backend, &base, &cpu()).unwrap();
        let mut lora = model.lora_adapter_init(&adapter).unwrap();
        let tokens = prompt(&model);
        assert!(tokens.len() >= 8, "several positions to compare");
        let with =
            |scale: Option<f32>, remove: bool, lora: &mut llama_cpp_2::model::LlamaLoraAdapter| {
                let mut decoder = SafeDecoder::new(&model, &backend);
                if let Some(scale) = scale {
                    decoder.ctx.lora_adapter_set(lora, scale).unwrap();
                }
                if remove {
                    decoder.ctx.lora_adapter_remove(lora).unwrap();
                }
                run(&mut decoder, &tokens)
            };
        let plain = with(None, false, &mut lora);
        let adapted = with(Some(1.0), false, &mut lora);
        // Scale 0 and a removed adapter leave llama.cpp's graph as it is without one.
        assert_eq!(with(Some(0.0), false, &mut lora), plain, "scale 0");
        assert_eq!(with(Some(1.0), true, &mut lora), plain, "removed");

        let merged_model = LlamaModel::load_from_file(&backend, &merged, &cpu()).unwrap();
        let offline = run(&mut SafeDecoder::new(&merged_model, &backend), &tokens);
        matches_merged(&adapted, &offline, &plain, "the adapter");
        assert_ne!(
            adapted.greedy, plain.greedy,
            "the adapter changes the greedy output"
        );
    }

    #[test]
    fn two_adapters_at_once_match_both_merged_offline() {
        let dir = TempDir::new("lora-two");
        let base = tiny_model(&dir, "base.gguf", TINY, WeightType::F32);
        // attn_v in both, so that two updates of one weight add up; alpha 0 is llama.cpp's
        // "no alpha" (scale 1, not alpha/rank).
        let first = lora(
            &dir,
            "first.gguf",
            &base,
            &spec(8, 16.0, &["attn_q", "attn_v", "ffn_up"], 21),
        );
        let second = lora(
            &dir,
            "second.gguf",
            &base,
            &spec(4, 0.0, &["attn_v", "attn_output", "ffn_down"], 22),
        );
        let both: [(&Path, f32); 2] = [(&first, 1.0), (&second, 0.5)];
        let merged = dir.path("merged.gguf");
        write_merged(&base, &both, &merged).unwrap();

        let backend = genrt_actors::llama_backend().unwrap();
        let reference = LlamaModel::load_from_file(
            &backend,
            &base,
            &LlamaModelParams::default().with_vocab_only(true),
        )
        .unwrap();
        let tokens = prompt(&reference);
        let adapted = run(&mut RawDecoder::new(&base, &both), &tokens);
        let offline = run(&mut RawDecoder::new(&merged, &[]), &tokens);
        let first_only = run(&mut RawDecoder::new(&base, &both[..1]), &tokens);
        matches_merged(&adapted, &offline, &first_only, "the second adapter");
    }

    #[test]
    fn an_adapter_for_another_shape_is_refused() {
        let dir = TempDir::new("lora-shape");
        let base = tiny_model(&dir, "base.gguf", TINY, WeightType::F32);
        let narrow = Shape {
            n_embd: 64,
            n_head: 2,
            n_head_kv: 1,
            ..TINY
        };
        let other = tiny_model(&dir, "other.gguf", narrow, WeightType::F32);
        let spec = spec(8, 16.0, &["attn_q", "attn_v"], 3);
        let fits = lora(&dir, "fits.gguf", &base, &spec);
        let misfit = lora(&dir, "misfit.gguf", &other, &spec);

        let backend = genrt_actors::llama_backend().unwrap();
        let mut model = LlamaModel::load_from_file(&backend, &base, &cpu()).unwrap();
        assert!(model.lora_adapter_init(&fits).is_ok());
        assert!(model.lora_adapter_init(&misfit).is_err());
        let err = write_merged(&base, &[(&misfit, 1.0)], &dir.path("merged.gguf")).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err:#}");
    }

    /// An adapter is written from a quantized base's header and loads on it; merging takes F32
    /// and F16 bases and refuses a quantized one, whose weights could not take the update
    /// without being quantized again.
    #[test]
    fn merging_takes_f32_and_f16_bases_and_refuses_quantized_ones() {
        let dir = TempDir::new("lora-types");
        let spec = spec(8, 16.0, &["attn_k", "ffn_down"], 5);
        let f16 = tiny_model(&dir, "f16.gguf", TINY, WeightType::F16);
        let f16_lora = lora(&dir, "f16-lora.gguf", &f16, &spec);
        let merged = dir.path("f16-merged.gguf");
        write_merged(&f16, &[(&f16_lora, 1.0)], &merged).unwrap();
        assert_copied_but_targets(&f16, &merged, &["attn_k", "ffn_down"]);

        let q8 = tiny_model(&dir, "q8.gguf", TINY, WeightType::Q8_0);
        let q8_lora = lora(&dir, "q8-lora.gguf", &q8, &spec);
        let backend = genrt_actors::llama_backend().unwrap();
        let mut model = LlamaModel::load_from_file(&backend, &q8, &cpu()).unwrap();
        assert!(model.lora_adapter_init(&q8_lora).is_ok());
        let err = write_merged(&q8, &[(&q8_lora, 1.0)], &dir.path("q8-merged.gguf")).unwrap_err();
        assert!(err.to_string().contains("F32 or F16 base"), "{err:#}");
    }

    #[test]
    fn lora_inputs_that_cannot_work_are_refused() {
        let dir = TempDir::new("lora-refused");
        let base = tiny_model(&dir, "base.gguf", TINY, WeightType::F32);
        let out = dir.path("lora.gguf");
        let err = write_lora(&base, &out, &spec(8, 16.0, &["attn_q", "attn_qkv"], 1)).unwrap_err();
        assert!(
            err.to_string().contains("unknown LoRA target \"attn_qkv\""),
            "{err:#}"
        );

        let qwen = dir.path("qwen.gguf");
        unsafe {
            let ctx = Gguf(sys::gguf_init_empty());
            sys::gguf_set_val_str(
                ctx.0,
                cstr("general.architecture").as_ptr(),
                cstr("qwen2").as_ptr(),
            );
            assert!(sys::gguf_write_to_file(
                ctx.0,
                cstr(qwen.to_str().unwrap()).as_ptr(),
                false
            ));
        }
        let err = write_lora(&qwen, &out, &spec(8, 16.0, &["attn_q"], 1)).unwrap_err();
        assert!(
            err.to_string().contains("llama-architecture models only"),
            "{err:#}"
        );

        let adapter = lora(&dir, "adapter.gguf", &base, &spec(8, 16.0, &["attn_q"], 1));
        let err = write_lora(&adapter, &out, &spec(8, 16.0, &["attn_q"], 1)).unwrap_err();
        assert!(err.to_string().contains("is an adapter"), "{err:#}");
        let err = write_merged(&base, &[(&base, 1.0)], &dir.path("merged.gguf")).unwrap_err();
        assert!(err.to_string().contains("not a LoRA adapter"), "{err:#}");

        // Creating the output would truncate the base before it is read.
        let size = std::fs::metadata(&base).unwrap().len();
        let err = write_merged(&base, &[(&adapter, 1.0)], &base).unwrap_err();
        assert!(err.to_string().contains("is an input"), "{err:#}");
        let err = write_lora(&base, &base, &spec(8, 16.0, &["attn_q"], 1)).unwrap_err();
        assert!(err.to_string().contains("is an input"), "{err:#}");
        assert_eq!(std::fs::metadata(&base).unwrap().len(), size);
    }
}
