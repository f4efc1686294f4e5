//! Embeds the built web pages (`web/dist`, committed; rebuilt by `scripts/explorer-web.sh`)
//! into the binary, so `cairn devnet` serves the explorer without Node.js.

use std::path::Path;

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, base, out);
        } else {
            let rel = p
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .replace('\\', "/");
            // Named from the crate's directory when compiled, not where this script ran: a
            // target dir shared by two checkouts may reuse this output for the other one.
            out.push(format!(
                "(\"/{rel}\", include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?}))),",
                format!("/web/dist/{rel}")
            ));
        }
    }
}

fn main() {
    // Read when the script runs, not when it was compiled: a target dir shared by two
    // checkouts runs one compiled script for both.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dist = Path::new(&manifest).join("web/dist");
    println!("cargo:rerun-if-changed=web/dist");
    let mut files = Vec::new();
    walk(&dist, &dist, &mut files);
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(
        out,
        format!(
            "/// The built pages: (path, bytes).\npub static ASSETS: &[(&str, &[u8])] = &[\n{}\n];\n",
            files.join("\n")
        ),
    )
    .expect("writing assets.rs");
}
