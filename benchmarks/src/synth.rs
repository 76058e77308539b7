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

use std::ffi::CString;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use genrt_actors::engine::gguf::GgufHeader;
use llama_cpp_sys_2 as sys;

/// Weight formats the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightType {
    F16,
    Q8_0,
    Q4_0,
}

impl WeightType {
    fn ggml(self) -> sys::ggml_type {
        match self {
            Self::F16 => sys::GGML_TYPE_F16,
            Self::Q8_0 => sys::GGML_TYPE_Q8_0,
            Self::Q4_0 => sys::GGML_TYPE_Q4_0,
        }
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
    fn file_type(self) -> u32 {
        match self {
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
    let ggml = Ggml(unsafe {
        sys::ggml_init(sys::ggml_init_params {
            mem_size: (tensors.len() + 1) * sys::ggml_tensor_overhead(),
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        })
    });
    ensure!(!ggml.0.is_null(), "ggml_init failed");
    let mut sizes = Vec::new();
    for t in &tensors {
        let ty = t.ty.map_or(sys::GGML_TYPE_F32, WeightType::ggml);
        let tensor = unsafe {
            if t.ne[1] == 1 {
                sys::ggml_new_tensor_1d(ggml.0, ty, t.ne[0])
            } else {
                sys::ggml_new_tensor_2d(ggml.0, ty, t.ne[0], t.ne[1])
            }
        };
        ensure!(!tensor.is_null(), "cannot describe {}", t.name);
        unsafe {
            sys::ggml_set_name(tensor, cstr(&t.name).as_ptr());
            sys::gguf_add_tensor(dst.0, tensor);
            sizes.push(sys::ggml_nbytes(tensor));
        }
    }

    let mut file = BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    let meta_size = unsafe { sys::gguf_get_meta_size(dst.0) };
    let mut meta = vec![0u8; meta_size];
    unsafe { sys::gguf_get_meta_data(dst.0, meta.as_mut_ptr().cast()) };
    file.write_all(&meta)?;
    let alignment = unsafe { sys::gguf_get_alignment(dst.0) };
    let mut rng = Rng(seed.max(1));
    let mut buf = Vec::new();
    let mut written = meta_size as u64;
    for (t, size) in tensors.iter().zip(sizes) {
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
        let padded = size.div_ceil(alignment) * alignment;
        file.write_all(&vec![0u8; padded - size])?;
        written += padded as u64;
    }
    file.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        for ty in [WeightType::Q4_0, WeightType::Q8_0, WeightType::F16] {
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
}
