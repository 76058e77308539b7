//! The web console's files, embedded at build time (`build.rs`) and served under `/console`.
//!
//! The console is static: it holds no data and no route of its own reads any. Every piece of
//! data it shows comes from the `/v1` API, called from the browser with the signed-in
//! credential, so it sees exactly what that credential's scopes allow and nothing more.
//! Its pages are held to a strict Content-Security-Policy: scripts and styles only from these
//! files, connections only to this origin.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

pub(crate) struct Asset {
    /// Relative to the console's root, `/`-separated.
    path: &'static str,
    body: &'static [u8],
    /// The same bytes gzip-compressed, written by the console's build for text files.
    gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// No inline script or style, nothing from another origin, no framing. `data:` images are the
/// only exception (icons the bundler inlines).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether this binary carries the console's build (false: a page saying how to build it).
pub fn built() -> bool {
    BUILT
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(index))
        .route("/console/", web::get().to(index))
        .route("/console/{path:.*}", web::get().to(file));
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html")
}

async fn file(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    serve(&req, &path)
}

fn serve(req: &HttpRequest, path: &str) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return secured(HttpResponse::NotFound())
            .content_type("text/plain; charset=utf-8")
            .body(format!("no console file `{path}`\n"));
    };
    let mut response = secured(HttpResponse::Ok());
    response
        .content_type(content_type(asset.path))
        .insert_header((header::VARY, "Accept-Encoding"))
        // Bundled files carry a content hash in their name: they never change. The page
        // that names them must be asked for again, or a new release would load old code.
        .insert_header((
            header::CACHE_CONTROL,
            if asset.path.starts_with("assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
        ));
    match asset.gzip {
        Some(gzip) if accepts_gzip(req) => response
            .insert_header((header::CONTENT_ENCODING, HeaderValue::from_static("gzip")))
            .body(gzip),
        _ => response.body(asset.body),
    }
}

fn secured(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"));
    builder
}

fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts.next() == Some("gzip")
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                })
        })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") | Some("webmanifest") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        let req = |value: &str| {
            actix_web::test::TestRequest::default()
                .insert_header((header::ACCEPT_ENCODING, value))
                .to_http_request()
        };
        assert!(accepts_gzip(&req("gzip, deflate, br")));
        assert!(accepts_gzip(&req("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(&req("br, deflate")));
        assert!(!accepts_gzip(&req("gzip;q=0, br")));
        assert!(!accepts_gzip(&req("gzip; q=0.000")));
        assert!(accepts_gzip(&req("gzip;q=0.001")));
        assert!(!accepts_gzip(
            &actix_web::test::TestRequest::default().to_http_request()
        ));
    }

    #[test]
    fn the_console_has_an_index_page_naming_its_bundle_when_built() {
        let index = ASSETS.iter().find(|a| a.path == "index.html").unwrap();
        let html = std::str::from_utf8(index.body).unwrap();
        if BUILT {
            let script = html.split("src=\"/console/").nth(1).unwrap();
            let script = script.split('"').next().unwrap();
            let bundle = ASSETS.iter().find(|a| a.path == script).unwrap();
            assert!(bundle.gzip.is_some_and(|g| g.len() < bundle.body.len()));
        } else {
            assert!(html.contains("make console"), "{html}");
        }
    }
}
