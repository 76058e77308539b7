use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    // Without this line Cargo runs the script again, and so recompiles the crate's library,
    // whenever any file of the package changes (a binary's main.rs included).
    println!("cargo:rerun-if-changed=build.rs");
    // The llama.cpp libraries sit beside the binary (see the actors build script).
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
    embed_console();
}

/// Writes `$OUT_DIR/console_assets.rs`: one `include_bytes!` per file of the console's build
/// (`console/dist`, made by `scripts/build-console.sh`), with its gzip twin where the build
/// wrote one. Generated here rather than with rust-embed because which folder is embedded is
/// decided here: a checkout whose console was never built (a bare `cargo build`) gets one page
/// saying how to build it, instead of a compile error.
fn embed_console() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let console = manifest.join("../console");
    let dist = console.join("dist");
    let (root, built) = if dist.join("index.html").is_file() {
        // A directory is scanned for changes file by file.
        println!("cargo:rerun-if-changed={}", dist.display());
        (dist, true)
    } else {
        // Watching the console folder notices the day its build appears (a missing path
        // would make Cargo rerun this script, and recompile the crate, on every build).
        if console.is_dir() {
            println!("cargo:rerun-if-changed={}", console.display());
        }
        let fallback = out.join("console-not-built");
        fs::create_dir_all(&fallback).unwrap();
        fs::write(fallback.join("index.html"), NOT_BUILT).unwrap();
        (fallback, false)
    };
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut code = String::from("pub(crate) static ASSETS: &[Asset] = &[\n");
    for file in &files {
        if file.extension().is_some_and(|e| e == "gz") {
            continue;
        }
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let mut gz = file.clone().into_os_string();
        gz.push(".gz");
        let gz = PathBuf::from(gz);
        let gzip = if gz.is_file() {
            format!("Some(include_bytes!({:?}))", gz.display().to_string())
        } else {
            "None".to_owned()
        };
        writeln!(
            code,
            "    Asset {{ path: {rel:?}, body: include_bytes!({:?}), gzip: {gzip} }},",
            file.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    writeln!(code, "pub(crate) const BUILT: bool = {built};").unwrap();
    fs::write(out.join("console_assets.rs"), code).unwrap();
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>genrt console</title></head>
<body><main><h1>The console was not built</h1>
<p>This genrt binary was compiled without the console's files. Build them with
<code>make console</code> (or <code>scripts/build-console.sh</code>), then build genrt again;
<code>make run</code> does both.</p></main></body></html>
";
