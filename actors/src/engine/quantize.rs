//! Quantization with llama.cpp's own quantizer (`llama_model_quantize`), for the model
//! registry's `quantize` option: an F32/F16/BF16 GGUF in, a quantized GGUF out, written tensor
//! by tensor (so that the output file's growth is the progress).

use std::ffi::CString;
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// The types the registry offers, by the names llama.cpp's `llama-quantize` uses, with their
/// average bits per weight (for the expected output size, hence progress).
const TYPES: &[(&str, sys::llama_ftype, f64)] = &[
    ("F16", sys::LLAMA_FTYPE_MOSTLY_F16, 16.0),
    ("BF16", sys::LLAMA_FTYPE_MOSTLY_BF16, 16.0),
    ("Q8_0", sys::LLAMA_FTYPE_MOSTLY_Q8_0, 8.5),
    ("Q6_K", sys::LLAMA_FTYPE_MOSTLY_Q6_K, 6.5625),
    ("Q5_K_M", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M, 5.7),
    ("Q5_K_S", sys::LLAMA_FTYPE_MOSTLY_Q5_K_S, 5.5),
    ("Q5_1", sys::LLAMA_FTYPE_MOSTLY_Q5_1, 6.0),
    ("Q5_0", sys::LLAMA_FTYPE_MOSTLY_Q5_0, 5.5),
    ("Q4_K_M", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M, 4.9),
    ("Q4_K_S", sys::LLAMA_FTYPE_MOSTLY_Q4_K_S, 4.6),
    ("Q4_1", sys::LLAMA_FTYPE_MOSTLY_Q4_1, 5.0),
    ("Q4_0", sys::LLAMA_FTYPE_MOSTLY_Q4_0, 4.5),
    ("Q3_K_L", sys::LLAMA_FTYPE_MOSTLY_Q3_K_L, 4.3),
    ("Q3_K_M", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M, 3.9),
    ("Q3_K_S", sys::LLAMA_FTYPE_MOSTLY_Q3_K_S, 3.5),
    ("Q2_K", sys::LLAMA_FTYPE_MOSTLY_Q2_K, 2.96),
];

/// The ggml tensor types (as `GgufInfo::quantization` names them) of a model that has not
/// been quantized: quantizing one of these loses only what the target type loses.
pub const UNQUANTIZED: &[&str] = &["f32", "f16", "bf16"];

/// The names `quantize` accepts, for error messages and documentation.
pub fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(|(name, _, _)| *name).collect()
}

/// Average bits per weight of `name`, when it is one of [`type_names`].
pub fn bits_per_weight(name: &str) -> Option<f64> {
    TYPES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, _, bpw)| *bpw)
}

/// Quantizes `input` to `output` as `type_name`. `requantize` lets an already quantized input
/// through (its quality loss adds up). `threads` 0 uses every core. Blocking, for minutes on
/// a large model: run it on a thread of its own.
pub fn quantize(
    input: &Path,
    output: &Path,
    type_name: &str,
    requantize: bool,
    threads: u32,
) -> Result<(), String> {
    let ftype = TYPES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(type_name))
        .map(|(_, ftype, _)| *ftype)
        .ok_or_else(|| format!("unknown quantization type `{type_name}`"))?;
    // The quantizer runs ggml's CPU code; make sure the backends are initialised first.
    super::llama_backend().map_err(|e| e.to_string())?;
    let cstr = |p: &Path| CString::new(p.to_string_lossy().as_bytes()).map_err(|e| e.to_string());
    let (input, output) = (cstr(input)?, cstr(output)?);
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.ftype = ftype;
    params.allow_requantize = requantize;
    params.nthread = threads as i32;
    let rc = unsafe { sys::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params) };
    match rc {
        0 => Ok(()),
        rc => Err(format!(
            "llama.cpp's quantizer failed (code {rc}); its log says why"
        )),
    }
}
