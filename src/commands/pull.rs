//! `hearth pull SOURCE [--as NAME]`: downloads into the store directly (no server needed), with
//! a progress bar on a terminal and plain status lines otherwise. Warns when the model will
//! not fit the RAM budget.

#![allow(clippy::print_stdout)] // reports what it did.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::PullArgs;
use crate::engine::estimate::estimate;
use crate::store::pull::{self, Progress};

pub async fn run(args: PullArgs) -> anyhow::Result<()> {
    let store = super::open_store(&args.store);
    let plan = pull::plan(&args.source, args.name.as_deref())?;
    let engine = crate::config::engine::EngineConfig::from_flags(&args.engine)?;
    let (budget, settings) = (engine.limits.ram_budget, engine.load);
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_status = String::new();
    let report = |p: Progress| {
        match (&bar, p.completed) {
            (Some(bar), Some(done)) => {
                bar.set_message(p.status.clone());
                bar.set_length(p.total.unwrap_or(0));
                bar.set_position(done);
            }
            (Some(bar), None) => bar.println(&p.status),
            // Without a terminal, one line per step.
            (None, _) if p.status != last_status => match p.total {
                Some(total) => eprintln!("{} ({total} bytes)", p.status),
                None => eprintln!("{}", p.status),
            },
            (None, _) => {}
        }
        last_status = p.status;
    };
    let check = |info: &crate::store::gguf::GgufInfo| {
        let need = estimate(info, &settings).total();
        (need > budget).then(|| {
            format!(
                "this model needs about {} MiB of RAM with num_ctx {} x {} slots, more than the budget of {} MiB",
                need >> 20,
                settings.num_ctx,
                settings.parallel,
                budget >> 20
            )
        })
    };
    let pulled = pull::pull(&store, &plan, &pull::PullLimits::local(), report, check).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let pulled = pulled?;
    println!(
        "pulled '{}' ({} bytes, {} downloaded, {})",
        pulled.name, pulled.size, pulled.downloaded, pulled.digest
    );
    Ok(())
}
