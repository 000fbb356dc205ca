//! `hearth rm MODEL...`: removes models; blobs no other model uses are deleted with them.

#![allow(clippy::print_stdout)] // reports what it did.

use crate::cli::RmArgs;

pub fn run(args: RmArgs) -> anyhow::Result<()> {
    let store = super::open_store(&args.store);
    for name in &args.names {
        let entry = store.remove(name)?;
        println!("deleted '{}'", entry.name);
    }
    Ok(())
}
