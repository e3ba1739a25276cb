//! Embeds the crash-test image build (guest-images/: its scripts, the guest's init and
//! scenarios, the crashtest module's source) in the binary, so that `crashvmm test` builds an
//! image for any kernel from an installed crashvmm alone.

use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What the image build does not need: the test guest (a Rust project of its own), the image
/// build's tests, documentation.
const SKIP: &[&str] = &["testguest", "tests", "README.md"];

fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("guest-images").map(|e| e.expect("entry")).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if SKIP.contains(&name.to_string_lossy().as_ref()) {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            walk(&path, &rel.join(&name), out);
        } else {
            out.push((rel.join(&name), path));
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images");
    let root = root.canonicalize().expect("guest-images next to suite/");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, Path::new(""), &mut files);
    let mut code = String::from("/// guest-images/ as built into this binary: (relative path, content).\n");
    code += "pub const FILES: &[(&str, &[u8])] = &[\n";
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let _ =
            writeln!(code, "    ({:?}, include_bytes!({:?})),", rel.display().to_string(), path.display().to_string());
    }
    code += "];\n";
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("embedded.rs");
    std::fs::write(out, code).expect("writing embedded.rs");
}
