fn main() {
    // Without this line Cargo runs the script again, and so recompiles the crate's library,
    // whenever any file of the package changes (a binary's main.rs included).
    println!("cargo:rerun-if-changed=build.rs");
    // The llama.cpp libraries sit beside the binary (see the actors build script).
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
}
