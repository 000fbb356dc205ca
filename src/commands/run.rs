//! `hearth run MODEL [PROMPT]`: loads the model in this process (no server needed) and streams
//! the answer to stdout. With no prompt on a terminal it is an interactive chat.

#![allow(clippy::print_stdout)] // `run` owns stdout: the answer goes there.

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use tokio::io::AsyncBufReadExt;

use crate::api::ollama::{ChatRequest, GenerateRequest};
use crate::cli::{GenerationArgs, RunArgs};
use crate::spec::options::parse_cli_option;
use crate::engine::Completion;
use crate::service::reply::{self, Piece};
use futures::StreamExt;
use crate::resources::{ModelLease, ModelManager};
use crate::service::{self, Caller, Generation, Outcome, ValidRequest};

/// The Ollama `options` object the flags describe.
pub fn options_from_flags(g: &GenerationArgs) -> anyhow::Result<Map<String, Value>> {
    let mut o = Map::new();
    for kv in &g.option {
        let (k, v) = parse_cli_option(kv).map_err(anyhow::Error::msg)?;
        // Repeated `stop` options collect into a list.
        match (k.as_str(), o.get_mut("stop")) {
            ("stop", Some(Value::Array(list))) => list.push(v),
            ("stop", Some(prev)) => *prev = json!([prev.clone(), v]),
            _ => {
                o.insert(k, v);
            }
        }
    }
    if let Some(t) = g.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(s) = g.seed {
        o.insert("seed".into(), json!(s));
    }
    if let Some(n) = g.num_predict {
        o.insert("num_predict".into(), json!(n));
    }
    if let Some(n) = g.num_ctx {
        o.insert("num_ctx".into(), json!(n));
    }
    Ok(o)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let options = options_from_flags(&args.generation)?;
    let manager = super::manager(super::open_store(&args.store), &args.engine)?;
    let service = service::Service::local(manager.clone()).with_router(super::router()?);
    let mut prompt = args.prompt.join(" ");
    let interactive_stdin = std::io::stdin().is_terminal();
    if !interactive_stdin {
        let mut piped = String::new();
        std::io::stdin().read_to_string(&mut piped).context("reading stdin")?;
        prompt = format!("{} {prompt}", piped.trim_end()).trim().to_string();
    }
    let num_ctx = options.get("num_ctx").and_then(Value::as_i64);
    if prompt.is_empty() && !interactive_stdin {
        bail!("no prompt: give one as an argument or on stdin");
    }
    // Validate the options before spending time on a load.
    let probe: GenerateRequest = serde_json::from_value(json!({"model": args.model, "options": options}))?;
    probe.validate().map_err(|e| anyhow::anyhow!(e.message))?;
    // A provider's model or a route has nothing to load here.
    let table = service.router.table();
    let lease = match table.remote(&args.model).is_some() || table.routes.contains_key(&args.model) {
        true => None,
        false => Some(preload(&manager, &args.model, num_ctx).await?),
    };

    if prompt.is_empty() {
        return interactive(&service, &args.model, options).await;
    }
    let req: GenerateRequest = serde_json::from_value(json!({
        "model": args.model, "prompt": prompt, "options": options, "stream": true,
    }))?;
    let req = req.validate().map_err(|e| anyhow::anyhow!(e.message))?;
    let (_, done) = stream_to_stdout(&service, req).await?;
    if args.verbose {
        if let Some(c) = done {
            print_stats(&c, lease.map_or(Duration::ZERO, |l| l.load_duration));
        }
    }
    Ok(())
}

/// Loads the model before the first prompt, with a spinner on a terminal.
async fn preload(manager: &ModelManager, model: &str, num_ctx: Option<i64>) -> anyhow::Result<ModelLease> {
    let entry = manager.store().resolve_name_or_path(model)?;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message(format!("loading {}", entry.name));
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let num_ctx = num_ctx.and_then(|n| u32::try_from(n).ok());
    let lease = manager.acquire(entry, num_ctx, None).await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok(lease?)
}

/// Streams one request's text to stdout; returns the text and the final accounting.
/// Ctrl-C stops the generation (the engine drops it) and returns what was produced.
async fn stream_to_stdout(service: &service::Service, req: ValidRequest) -> anyhow::Result<(String, Option<Completion>)> {
    let Outcome::Generating(Generation { events, .. }) = service.start(req, Caller::Local, Instant::now()).await? else {
        return Ok((String::new(), None));
    };
    let pieces = reply::pieces(events, None);
    tokio::pin!(pieces);
    let mut text = String::new();
    let mut out = std::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let done = loop {
        tokio::select! {
            piece = pieces.next() => match piece {
                Some(Piece::Text { text: t, .. }) => {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                    text.push_str(&t);
                }
                Some(Piece::Done(c)) => break Some(c),
                // No tools are offered here.
                Some(Piece::ToolCall { .. }) => {}
                Some(Piece::Failed(e)) => return Err(e.into()),
                None => bail!("generation ended unexpectedly"),
            },
            _ = &mut ctrl_c => break None,
        }
    };
    println!();
    Ok((text, done))
}

fn print_stats(c: &Completion, load: Duration) {
    let rate = |n: u32, d: Duration| if d.is_zero() { 0.0 } else { f64::from(n) / d.as_secs_f64() };
    eprintln!("load duration:        {load:?}");
    eprintln!("prompt eval count:    {} token(s)", c.prompt_tokens);
    eprintln!("prompt eval duration: {:?}", c.prompt_eval);
    eprintln!("prompt eval rate:     {:.2} tokens/s", rate(c.prompt_tokens, c.prompt_eval));
    eprintln!("eval count:           {} token(s)", c.eval_tokens);
    eprintln!("eval duration:        {:?}", c.eval);
    eprintln!("eval rate:            {:.2} tokens/s", rate(c.eval_tokens, c.eval));
}

const HELP: &str = "Available commands:
  /set parameter <name> <value>  Set an option (temperature, seed, num_predict, num_ctx, top_k, stop, ...)
  /clear                         Forget the conversation
  /bye                           Exit
  /?                             This help
Use \"\"\" to begin and end a multi-line message.";

/// The interactive chat: keeps the history and sends it with each turn.
async fn interactive(service: &service::Service, model: &str, mut options: Map<String, Value>) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut history: Vec<Value> = Vec::new();
    loop {
        print!(">>> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next_line().await? else { break };
        let mut input = line.clone();
        if let Some(first) = line.trim_start().strip_prefix("\"\"\"") {
            // Multi-line: until a line ending with """.
            let mut buf = first.to_string();
            if let Some(done) = buf.strip_suffix("\"\"\"").map(str::to_string).filter(|_| !first.is_empty()) {
                buf = done;
            } else {
                loop {
                    print!("... ");
                    std::io::stdout().flush()?;
                    let Some(next) = lines.next_line().await? else { break };
                    if let Some(end) = next.strip_suffix("\"\"\"") {
                        buf.push('\n');
                        buf.push_str(end);
                        break;
                    }
                    buf.push('\n');
                    buf.push_str(&next);
                }
            }
            input = buf.trim_start_matches('\n').to_string();
        }
        let trimmed = input.trim();
        match trimmed {
            "" => continue,
            "/bye" | "/exit" => break,
            "/clear" => {
                history.clear();
                println!("Cleared session context");
                continue;
            }
            "/?" | "/help" => {
                println!("{HELP}");
                continue;
            }
            _ => {}
        }
        if let Some(rest) = trimmed.strip_prefix("/set parameter ") {
            match rest.trim().split_once(char::is_whitespace) {
                Some((k, v)) => match parse_cli_option(&format!("{k}={}", v.trim())) {
                    Ok((k, v)) => {
                        println!("Set parameter '{k}' to '{v}'");
                        options.insert(k, v);
                    }
                    Err(e) => println!("{e}"),
                },
                None => println!("Usage: /set parameter <name> <value>"),
            }
            continue;
        }
        if trimmed.starts_with('/') {
            println!("Unknown command '{trimmed}'. Type /? for help");
            continue;
        }
        history.push(json!({"role": "user", "content": input}));
        let req: ChatRequest = serde_json::from_value(json!({
            "model": model, "messages": history, "options": options, "stream": true,
        }))?;
        let req = match req.validate() {
            Ok(r) => r,
            Err(e) => {
                history.pop();
                println!("Error: {}", e.message);
                continue;
            }
        };
        match stream_to_stdout(service, req).await {
            Ok((text, _)) => history.push(json!({"role": "assistant", "content": text})),
            Err(e) => {
                history.pop();
                println!("Error: {e}");
            }
        }
        println!();
    }
    Ok(())
}
