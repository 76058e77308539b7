fn main() {
    // The llama.cpp libraries sit beside the binary (see the actors build script).
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
}
