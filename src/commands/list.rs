//! `hearth list`: every model the store resolves (hearth's, drop-in files, Ollama's), as a table.

#![allow(clippy::print_stdout)] // a listing command: its table is the output.

use crate::cli::StoreArgs;

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    let store = super::open_store(&args);
    let entries = store.list()?;
    println!("{:<32} {:<14} {:<10} {:<8} MODIFIED", "NAME", "ID", "SIZE", "SOURCE");
    for e in entries {
        let id: String = store.digest(&e)?.trim_start_matches("sha256:").chars().take(12).collect();
        let modified = chrono::DateTime::<chrono::Local>::from(e.modified).format("%Y-%m-%d %H:%M");
        println!("{:<32} {:<14} {:<10} {:<8} {modified}", e.name, id, super::human_bytes(e.size), e.origin.as_str());
    }
    Ok(())
}
