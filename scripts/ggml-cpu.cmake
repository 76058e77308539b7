# Included by CMake right after llama.cpp's `project(ggml)` (CMAKE_PROJECT_ggml_INCLUDE, set in
# .cargo/config.toml), so that it runs before ggml reads its options.
#
# llama-cpp-2's `dynamic-backends` feature turns on GGML_CPU_ALL_VARIANTS: fourteen builds of
# ggml's CPU code, one per x86-64 instruction-set level, of which the process loads the best
# its processor runs. A binary shipped to other machines needs that (the container image, the
# GPU bundle), and it is about half of a first build on two cores. A build that runs where it
# was built (`make run`, `make test`, `make bench`) needs only the one variant this processor
# would pick: the same code, built once, as `libggml-cpu.so`.
#
# GGML_GENRT_CPU_VARIANTS chooses: `native` (the default, from .cargo/config.toml) or `all`.
# Its name starts with GGML_ because llama-cpp-sys-2's build script passes such variables to
# CMake and rebuilds llama.cpp when one changes, so switching never leaves a stale build.
# (GGML_NATIVE, llama.cpp's own one-machine build, refuses to combine with dynamic backends.)
# Editing this file does not rebuild llama.cpp by itself (cargo watches the variable, not the
# file): `cargo clean -p llama-cpp-sys-2` after a change.
if(NOT GGML_GENRT_CPU_VARIANTS MATCHES "^(native|all)$")
    message(FATAL_ERROR "GGML_GENRT_CPU_VARIANTS must be native or all, not `${GGML_GENRT_CPU_VARIANTS}`")
endif()
if(GGML_GENRT_CPU_VARIANTS STREQUAL "all" OR NOT EXISTS "/proc/cpuinfo"
   OR NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    return()
endif()

file(READ "/proc/cpuinfo" cpuinfo)
string(REGEX MATCH "flags[ \t]*:[^\n]*" flags "${cpuinfo}")
string(APPEND flags " ")
# ggml's feature names and the kernel's flag for each.
set(flag_SSE42 "sse4_2")
set(flag_AVX "avx")
set(flag_F16C "f16c")
set(flag_FMA "fma")
set(flag_AVX2 "avx2")
set(flag_BMI2 "bmi2")
set(flag_AVX512 "avx512f")
set(flag_AVX512_VBMI "avx512vbmi")
set(flag_AVX512_VNNI "avx512_vnni")
set(flag_AVX512_BF16 "avx512_bf16")
set(flag_AVX_VNNI "avx_vnni")
set(flag_AMX_TILE "amx_tile")
set(flag_AMX_INT8 "amx_int8")
# The x86 variants of ggml/src/CMakeLists.txt (GGML_CPU_ALL_VARIANTS), each a comma-separated
# feature list (a semicolon would split it: CMake lists are semicolon-separated strings).
set(variants
    "SSE42"
    "SSE42,AVX"
    "SSE42,AVX,F16C"
    "SSE42,AVX,F16C,FMA"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512,AVX512_VBMI"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512,AVX512_VNNI"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512,AVX512_VBMI,AVX512_VNNI"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512,AVX512_VNNI,AVX512_BF16"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512,AVX512_VBMI,AVX512_VNNI,AVX512_BF16"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX_VNNI"
    "SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512,AVX512_VBMI,AVX512_VNNI,AVX512_BF16,AMX_TILE,AMX_INT8")
# The variant with the most features this processor has, as llama.cpp's loader would pick
# among the fourteen modules (none: the plain x86-64 baseline).
set(best "")
set(best_count 0)
foreach(variant IN LISTS variants)
    string(REPLACE "," ";" features "${variant}")
    set(supported TRUE)
    foreach(feature IN LISTS features)
        if(NOT flags MATCHES " ${flag_${feature}} ")
            set(supported FALSE)
        endif()
    endforeach()
    list(LENGTH features count)
    if(supported AND count GREATER_EQUAL best_count)
        set(best "${features}")
        set(best_count ${count})
    endif()
endforeach()

# Normal variables take precedence over the cache entries the build script defined, and
# ggml's option() calls leave them alone (policy CMP0077).
set(GGML_CPU_ALL_VARIANTS OFF)
# NATIVE too: with RUSTFLAGS=-C target-cpu=native the build script turns it on, and ggml refuses
# it beside dynamic backends (the variant list above already follows this processor).
foreach(feature NATIVE SSE42 AVX AVX2 BMI2 AVX_VNNI FMA F16C AVX512 AVX512_VBMI AVX512_VNNI
                AVX512_BF16 AMX_TILE AMX_INT8 AMX_BF16)
    set(GGML_${feature} OFF)
endforeach()
foreach(feature IN LISTS best)
    set(GGML_${feature} ON)
endforeach()
message(STATUS "genrt: one CPU backend for this processor: ${best}")
