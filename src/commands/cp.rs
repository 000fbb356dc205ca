//! `hearth cp SOURCE DEST`: a second name for a model; the weights are shared, not copied.

#![allow(clippy::print_stdout)] // reports what it did.

use crate::cli::CpArgs;

pub fn run(args: CpArgs) -> anyhow::Result<()> {
    let store = super::open_store(&args.store);
    let dest = store.copy(&args.source, &args.destination)?;
    println!("copied '{}' to '{dest}'", args.source);
    Ok(())
}
