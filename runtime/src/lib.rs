//! The genrt runtime: configuration, the HTTP API (actix-web), authentication, persistence
//! (sea-orm on SQLite or Postgres) and the response cache, around the actor tree.
//!
//! This is the only crate that knows HTTP, SQL and JWT.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod invocation;
pub mod queue;
mod read_ahead;
pub mod records;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod webhooks;

pub use app::{start, start_with_backend, AppState, RunningServer, StartError};

/// Tenants' templates render under a memory budget (see `genrt_functions::within_budget`),
/// which needs this allocator; every binary built on the runtime gets it.
#[global_allocator]
static ALLOCATOR: genrt_functions::BudgetAllocator = genrt_functions::BudgetAllocator;
pub use config::Config;

/// The layering invariants of ARCHITECTURE.md, checked on the source: only the HTTP layer
/// (`api/`, and `app.rs`, which assembles the server) uses actix-web, and the modules below it
/// never reach up into it.
#[cfg(test)]
mod layering {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Source lines of `path` that are code, not comments.
    fn code(path: &Path) -> Vec<(usize, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim_start().starts_with("//"))
            .map(|(i, l)| (i + 1, l.to_owned()))
            .collect()
    }

    fn violations(mentioning: &[&str], exempt: impl Fn(&str) -> bool) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut found = Vec::new();
        for file in files {
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if exempt(&rel) {
                continue;
            }
            for (n, line) in code(&file) {
                if mentioning.iter().any(|m| line.contains(m)) {
                    found.push(format!("{rel}:{n}: {}", line.trim()));
                }
            }
        }
        found
    }

    #[test]
    fn only_the_http_layer_uses_the_web_framework() {
        // Spelled in two parts so that this file does not name the crate it looks for.
        let actix = concat!("actix", "_web");
        let found = violations(&[actix], |f| {
            f.starts_with("api/") || f == "app.rs" || f == "main.rs"
        });
        assert!(
            found.is_empty(),
            "actix-web outside the HTTP layer:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn nothing_below_the_http_layer_imports_it() {
        let found = violations(&["crate::api", "super::api"], |f| {
            f.starts_with("api/") || f == "app.rs" || f == "main.rs" || f == "lib.rs"
        });
        assert!(
            found.is_empty(),
            "imports of the HTTP layer:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_invocation_service_knows_no_app_state() {
        let found = violations(&["crate::app", "AppState"], |f| {
            !f.starts_with("invocation/")
        });
        assert!(
            found.is_empty(),
            "the service reaches into the app:\n{}",
            found.join("\n")
        );
    }

    /// The actor tree is invoked from one place: the invocation service.
    #[test]
    fn only_the_invocation_service_invokes_the_tree() {
        let found = violations(
            &["tree.invoke(", "tree.embed(", ".invoke(invocation"],
            |f| f.starts_with("invocation/") || f == "lib.rs",
        );
        assert!(
            found.is_empty(),
            "the tree invoked around the service:\n{}",
            found.join("\n")
        );
    }
}
