//! Puts llama.cpp's shared libraries and backend modules beside the binaries that Cargo
//! builds, so that `target/<profile>/genrt` runs as it is (its RPATH is `$ORIGIN`, see the
//! runtime's build script) and finds its backend modules in its own folder, as a deployed
//! binary does.
//!
//! Written by hand because llama-cpp-sys-2's own copy step, with `dynamic-backends`, links
//! only the unversioned `libllama.so`-style symlinks, which dangle without the
//! `libllama.so.0` they point to, and then fails with "File exists" whenever its build
//! script runs again. Completing the links here makes them resolve, so that both problems go.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_BACKENDS_DIR");
    println!("cargo:rerun-if-env-changed=GGML_GENRT_CPU_VARIANTS");
    // Which CPU modules the current llama.cpp build made (scripts/ggml-cpu.cmake): CMake's
    // install step never deletes the other kind, left by an earlier build in the same
    // folder, and llama.cpp's loader would prefer `libggml-cpu-<variant>.so` files over a
    // newer `libggml-cpu.so`, so those of the other kind are neither copied nor kept.
    let all_variants = std::env::var("GGML_GENRT_CPU_VARIANTS").as_deref() == Ok("all");
    let stale = |name: &str| {
        let variant = name.starts_with("libggml-cpu-");
        let single = name.starts_with("libggml-cpu.so");
        if all_variants {
            single
        } else {
            variant
        }
    };
    let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR").map(PathBuf::from) else {
        return;
    };
    let libs = backends
        .parent()
        .expect("backends dir has a parent")
        .join("lib");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out.
    let profile = out.ancestors().nth(3).expect("OUT_DIR is deep enough");
    for dest in [
        profile.to_path_buf(),
        profile.join("deps"),
        profile.join("examples"),
    ] {
        if !dest.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dest).into_iter().flatten().flatten() {
            if stale(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for dir in [&libs, &backends] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let name_str = name.to_string_lossy();
                if name_str.contains(".so") && !stale(&name_str) {
                    place(&entry.path(), &dest.join(&name));
                }
            }
        }
    }
}

/// Makes `dst` the same as `src`: the same symlink, or the same file (hard-linked where it
/// can be, copied otherwise).
fn place(src: &Path, dst: &Path) {
    let _ = std::fs::remove_file(dst);
    let result = match std::fs::read_link(src) {
        Ok(target) => std::os::unix::fs::symlink(target, dst),
        Err(_) => std::fs::hard_link(src, dst).or_else(|_| std::fs::copy(src, dst).map(|_| ())),
    };
    if let Err(err) = result {
        println!("cargo:warning=cannot place {}: {err}", dst.display());
    }
}
