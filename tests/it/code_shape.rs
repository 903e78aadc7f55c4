//! The shape the code keeps (ARCHITECTURE.md): no production function over 70 lines, and no
//! task spawned outside a tracker. Read from the sources, as a reviewer would check them.

use std::path::{Path, PathBuf};

/// The longest a production function may be, in lines from its signature to its closing brace.
const MAX_FN_LINES: usize = 70;

/// The crates' sources, production code only: each file up to its `#[cfg(test)]` module.
fn production_sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["node", "raft", "storage", "transport"] {
        collect(&root.join(krate).join("src"), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let end = text.find("#[cfg(test)]").unwrap_or(text.len());
            (f, text[..end].to_string())
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A line with its comment, string and character literals blanked, so that only the code's
/// own braces remain (a lifetime's quote is left alone).
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => break,
            '"' => {
                while let Some(s) = chars.next() {
                    match s {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            '\'' => {
                // 'x' or '\x…' is a character literal; anything else a lifetime.
                let rest: Vec<char> = chars.clone().take(12).collect();
                let len = match rest.first() {
                    Some('\\') => rest.iter().skip(2).position(|&q| q == '\'').map(|i| i + 3),
                    Some(_) if rest.get(1) == Some(&'\'') => Some(2),
                    _ => None,
                };
                match len {
                    Some(n) => {
                        for _ in 0..n {
                            chars.next();
                        }
                        out.push_str("' '");
                    }
                    None => out.push(c),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every function of `text` with its first line (1-based) and its length in lines.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<String> = text.lines().map(code_of).collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = fn_name(&lines[i]) else {
            i += 1;
            continue;
        };
        let (mut depth, mut opened, mut j) = (0i64, false, i);
        'body: while j < lines.len() {
            for c in lines[j].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened => break 'body,
                    _ => {}
                }
                if opened && depth == 0 {
                    break 'body;
                }
            }
            j += 1;
        }
        if opened {
            found.push((name, i + 1, j - i + 1));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    found
}

/// The name of the function a line declares, if it does.
fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    let qualifiers = ["pub", "async", "const", "unsafe", "extern"];
    let before_ok = words[..at]
        .iter()
        .all(|w| qualifiers.contains(w) || w.starts_with("pub("));
    let name: String = words
        .get(at + 1)?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (before_ok && !name.is_empty()).then_some(name)
}

#[test]
fn no_production_function_is_over_70_lines() {
    let mut long = Vec::new();
    for (file, text) in production_sources() {
        for (name, line, len) in functions(&text) {
            if len > MAX_FN_LINES {
                long.push(format!("{}:{line} {name} ({len} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them into their steps):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_finds_a_long_function_and_skips_braces_in_literals() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let text = format!(
        "pub(crate) async fn long(a: &'static str) -> u8 {{\n    let s = \"}}}}\";\n    \
         let c = '{{';\n    let q = '\\'';\n    // }}\n{body}}}\n\nfn short() {{}}\nfn declared();\n"
    );
    let found = functions(&text);
    assert_eq!(found[0], ("long".to_string(), 1, MAX_FN_LINES + 6));
    assert_eq!(found[1], ("short".to_string(), MAX_FN_LINES + 8, 1));
    assert_eq!(found.len(), 2);
}

#[test]
fn every_task_is_spawned_on_a_tracker() {
    // Spawns whose handle is kept and awaited or aborted by their owner.
    let owned = [
        // gossip's task: `Gossip::start` returns its handle, which the node joins at shutdown.
        (
            "transport/src/gossip.rs",
            "Ok((gossip, tokio::spawn(task.run(shutdown))))",
        ),
        // a link's sender: its `AbortOnDropHandle` ends it with the link.
        (
            "transport/src/link.rs",
            "AbortOnDropHandle::new(tokio::spawn(async move {",
        ),
    ];
    let mut bare = Vec::new();
    for (file, text) in production_sources() {
        let shown = file.display().to_string();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            if !(code.contains("tokio::spawn(") || code.contains("tokio::task::spawn(")) {
                continue;
            }
            let allowed = owned
                .iter()
                .any(|(f, l)| shown.ends_with(f) && line.contains(l));
            if !allowed {
                bare.push(format!("{shown}:{} {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "tasks spawned outside a tracker (spawn them on the tracker of their group):\n{}",
        bare.join("\n")
    );
}
