//! `hearth show MODEL`: a model's architecture, size, context, quantization and template, read
//! from the GGUF without loading it.

#![allow(clippy::print_stdout)] // a report command: the report is the output.

use crate::api::models;
use crate::cli::ShowArgs;

pub fn run(args: ShowArgs) -> anyhow::Result<()> {
    let store = super::open_store(&args.store);
    let entry = store.resolve_name_or_path(&args.model)?;
    let settings = crate::config::engine::EngineConfig::from_flags(&args.engine)?.load;
    let show = models::show(&store, &entry, false, &settings).map_err(|e| anyhow::anyhow!(e.message))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&show)?);
        return Ok(());
    }
    if args.template {
        println!("{}", show["template"].as_str().unwrap_or(""));
        return Ok(());
    }
    let info = &show["model_info"];
    let arch = show["details"]["family"].as_str().unwrap_or("unknown");
    let field = |k: &str| info[format!("{arch}.{k}")].as_u64().map_or("-".to_string(), |v| v.to_string());
    println!("  Model");
    println!("    {:<20}{arch}", "architecture");
    println!("    {:<20}{}", "parameters", show["details"]["parameter_size"].as_str().unwrap_or("-"));
    println!("    {:<20}{}", "context length", field("context_length"));
    println!("    {:<20}{}", "embedding length", field("embedding_length"));
    println!("    {:<20}{}", "quantization", show["details"]["quantization_level"].as_str().unwrap_or("-"));
    println!("    {:<20}{}", "file", entry.path.display());
    let est = &show["ram_estimate"];
    let mib = |k: &str| est[k].as_u64().unwrap_or(0) >> 20;
    println!();
    println!("  RAM estimate (num_ctx {} shared by {} slots)", est["num_ctx"], est["parallel"]);
    println!("    {:<20}{} MiB", "total", mib("total"));
    println!("    {:<20}{} MiB", "weights", mib("weights"));
    println!("    {:<20}{} MiB", "kv cache", mib("kv_cache"));
    println!("    {:<20}{} MiB", "overhead", mib("overhead"));
    println!("    {:<20}{} MiB", "prefix store", mib("prefix_store"));
    println!("    {:<20}{} MiB more, counted on the first embed request", "embedding", mib("embedding"));
    if let Some(license) = show["license"].as_str().filter(|l| !l.is_empty()) {
        println!();
        println!("  License");
        println!("    {license}");
    }
    Ok(())
}
