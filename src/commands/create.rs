//! `hearth create NAME -f Modelfile`: a model from a Modelfile. Paths in it are relative to
//! the Modelfile's directory.

#![allow(clippy::print_stdout)] // reports what it did.

use anyhow::Context;

use crate::cli::CreateArgs;
use crate::store::modelfile;

pub fn run(args: CreateArgs) -> anyhow::Result<()> {
    let store = super::open_store(&args.store);
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let spec = modelfile::parse(&text).with_context(|| args.file.display().to_string())?;
    let dir = args.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let manifest = store.create(&args.name, &spec, Some(dir))?;
    println!("created '{}' from {} ({})", crate::store::normalize_name(&args.name)?, spec.from, manifest.model);
    Ok(())
}
