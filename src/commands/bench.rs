//! `hearth bench MODEL`: measures a model in this process, or a running server with `--url`,
//! and prints a table (or `--json`) to stdout, with a progress bar on a terminal's stderr and
//! an optional SVG chart. The measuring lives in `crate::bench`; this file only turns flags
//! into a plan and a target, and the report into output.

#![allow(clippy::print_stdout)] // `bench` owns stdout: the table or the JSON goes there.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;

use crate::bench::{self, Api, Plan, Progress, Target};
use crate::cli::BenchArgs;
use crate::service::{Caller, Service};

/// Context per slot for an in-process run when the flags give none: the prompts need ~650
/// tokens, and with 16 slots the default 4096 would reserve KV memory the bench never uses.
const BENCH_CONTEXT: u32 = 2048;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&args);
    plan.check()?;
    let target = match &args.url {
        Some(url) => {
            let api = if args.api == "openai" { Api::OpenAi } else { Api::Ollama };
            Target::http(url, api, args.api_key.as_deref())?
        }
        None => {
            let mut engine = args.engine.clone();
            engine.parallel = engine.parallel.or(Some(plan.max_concurrency()));
            engine.context_length = engine.context_length.or(Some(BENCH_CONTEXT));
            let manager = super::manager(super::open_store(&args.store), &engine)?;
            Target::Local { service: Service::local(manager), caller: Caller::Local }
        }
    };
    let progress = Bar::new(&plan);
    let result = bench::run(&target, &plan, &progress).await;
    progress.finish();
    let mut report = result.with_context(|| format!("benchmarking {}", plan.model))?;
    if let Some(pid) = args.pid {
        report.peak_rss_bytes = bench::peak_rss(Some(pid));
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, bench::svg::chart(&report)).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
        if let Some(path) = &args.svg {
            println!("chart: {}", path.display());
        }
    }
    Ok(())
}

fn plan(args: &BenchArgs) -> Plan {
    let base = if args.quick { Plan::quick(&args.model) } else { Plan::full(&args.model) };
    Plan {
        runs: args.runs.unwrap_or(base.runs),
        decode_tokens: args.decode_tokens.unwrap_or(base.decode_tokens),
        concurrency: args.concurrency.clone().unwrap_or_else(|| base.concurrency.clone()),
        requests: args.requests.unwrap_or(base.requests),
        num_predict: args.num_predict.unwrap_or(base.num_predict),
        ..base
    }
}

/// An indicatif bar over every timed request, shown only when stderr is a terminal.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(plan: &Plan) -> Bar {
        Bar(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(plan.total_requests());
            let style = indicatif::ProgressStyle::with_template("{spinner} {msg:<16} [{bar:30}] {pos}/{len} requests, {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        }))
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(name.to_string());
        }
    }

    fn request_done(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}
