//! The admin UI's files, embedded into the binary: `node` serves them at `/ui/`.
//!
//! # Layout
//! - `web/`: the UI itself, plain HTML, CSS and ES modules that the browser loads as they are
//!   (no build step, no request leaves the cluster);
//! - this file: [`FILES`], every file of `web/` with its content type, and [`get`].
//!
//! Files are listed by hand with `include_bytes!` rather than through a directory-embedding
//! crate: cargo rebuilds when any listed file changes, and the test at the end fails when a
//! file of `web/` is missing from the list (or the UI grows past its size budget), so nothing
//! is served that was not meant to be.

/// One embedded file: its name under `/ui/`, content type and bytes.
pub struct File {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! files {
    ($($name:literal => $ty:expr,)*) => {
        /// Every file of the UI.
        pub const FILES: &[File] = &[$(File {
            name: $name,
            content_type: $ty,
            bytes: include_bytes!(concat!("../web/", $name)),
        }),*];
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

files! {
    "index.html" => HTML,
    "style.css" => CSS,
    "favicon.svg" => SVG,
    "app.js" => JS,
    "api.js" => JS,
    "dom.js" => JS,
    "live.js" => JS,
    "overview.js" => JS,
    "keys.js" => JS,
    "locks.js" => JS,
    "sessions.js" => JS,
    "cache.js" => JS,
    "queues.js" => JS,
    "channels.js" => JS,
    "services.js" => JS,
    "security.js" => JS,
    "operations.js" => JS,
    "node.js" => JS,
}

/// The file named `name` (no leading slash), if the UI has it.
pub fn get(name: &str) -> Option<&'static File> {
    FILES.iter().find(|f| f.name == name)
}

/// The UI's entry page.
pub fn index() -> &'static File {
    get("index.html").expect("index.html is listed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_web_is_listed_with_its_type() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|f| f.name.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk, "admin-ui/web and FILES differ");
        for f in FILES {
            let want = match f.name.rsplit_once('.').map(|(_, ext)| ext) {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => SVG,
                other => panic!("{}: no content type for {other:?}", f.name),
            };
            assert_eq!(f.content_type, want, "{}", f.name);
        }
    }

    #[test]
    fn the_ui_stays_under_300_kb() {
        let total: usize = FILES.iter().map(|f| f.bytes.len()).sum();
        assert!(total < 300 * 1024, "the UI is {total} bytes");
    }

    /// No inline script or style, which the page's policy would refuse anyway, and nothing
    /// loaded from elsewhere.
    #[test]
    fn pages_load_only_their_own_files() {
        for f in FILES {
            let text = std::str::from_utf8(f.bytes).unwrap();
            for bad in [
                "http://",
                "https://",
                "//cdn",
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                if f.name == "favicon.svg" && bad == "http://" {
                    continue;
                }
                assert!(!text.contains(bad), "{} contains {bad}", f.name);
            }
        }
        let index = std::str::from_utf8(index().bytes).unwrap();
        assert!(!index.contains("<script>") && !index.contains("style="));
        assert!(!index.contains("<style"));
    }
}
