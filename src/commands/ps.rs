//! `hearth ps`: asks a running server which models it has loaded.

#![allow(clippy::print_stdout)] // a listing command: its table is the output.

use anyhow::Context;
use serde_json::Value;

use crate::cli::ClientArgs;

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let addr = super::server_addr(&args)?;
    let url = format!("http://{addr}/api/ps");
    let body: Value = super::http_client(args.api_key.as_deref())?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach hearth at {addr}; is `hearth serve` running?"))?
        .error_for_status()?
        .json()
        .await?;
    if let (Some(budget), Some(used)) = (body["ram_budget"].as_u64(), body["ram_used"].as_u64()) {
        println!("RAM: {} of {} budget in use", super::human_bytes(used), super::human_bytes(budget));
    }
    println!("{:<32} {:<14} {:<10} {:<8} UNTIL", "NAME", "ID", "SIZE", "CONTEXT");
    for m in body["models"].as_array().into_iter().flatten() {
        let id: String = m["digest"].as_str().unwrap_or("").chars().take(12).collect();
        println!(
            "{:<32} {:<14} {:<10} {:<8} {}",
            m["name"].as_str().unwrap_or("?"),
            id,
            super::human_bytes(m["size"].as_u64().unwrap_or(0)),
            m["context_length"].as_u64().unwrap_or(0),
            m["expires_at"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
