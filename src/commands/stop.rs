//! `hearth stop MODEL`: asks a running server to unload a model (`keep_alive: 0`, as Ollama).

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::StopArgs;

pub async fn run(args: StopArgs) -> anyhow::Result<()> {
    let addr = super::server_addr(&args.client)?;
    let resp = super::http_client(args.client.api_key.as_deref())?
        .post(format!("http://{addr}/api/generate"))
        .json(&json!({"model": args.model, "prompt": "", "keep_alive": 0, "stream": false}))
        .send()
        .await
        .with_context(|| format!("cannot reach hearth at {addr}; is `hearth serve` running?"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{}", body["error"].as_str().unwrap_or("request failed"));
    }
    Ok(())
}
