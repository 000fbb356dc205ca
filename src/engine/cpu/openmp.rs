//! How llama.cpp's OpenMP threads wait for work, set before libgomp starts.
//!
//! libgomp reads its settings from the environment once, when the process starts, and whenever
//! it manages more threads than the machine has CPUs it stops spinning almost at once (100
//! spins) and sleeps between the steps of a graph. Each loaded model's worker drives its own
//! team of threads, so a second loaded model, idle or not, puts a machine whose cores the
//! first model's threads fill in that state, and every graph node then pays a futex wake-up:
//! SmolLM2 decoding fell from about 120 to 39 tokens/s with Gemma 3 loaded beside it, and Gemma
//! 3 from 50 to 31 with SmolLM2 (`hearth serve`, 2 threads, 2-vCPU Xeon). With
//! `OMP_WAIT_POLICY=active` the short wait is 1000 spins, which was enough (129 and 50
//! tokens/s), and `GOMP_SPINCOUNT=300000` keeps the usual wait as libgomp's default has it
//! (about 3 ms of spinning, then sleep), so an idle server still sleeps.
//!
//! libgomp is linked to the binary, so it has read the environment before `main` runs: `serve`
//! starts itself again, once, with the two variables set. A user who sets either keeps their
//! choice, and nothing is started again. Only `serve`: `run`, `stdio` and `bench` hold one
//! model, and they are what runs under qemu-user to emulate another CPU, whose `execve` would
//! start the new image natively, outside the emulation (set the variables yourself to serve
//! under qemu).
//! Must not: override a choice the user made in the environment, or start anything but itself.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// What hearth sets when the user set neither.
pub const WAIT_POLICY: [(&str, &str); 2] = [("OMP_WAIT_POLICY", "active"), ("GOMP_SPINCOUNT", "300000")];

/// Replaces the process with itself, the wait policy set, unless the user set it (or this is
/// already the second start). Call in `main` before any thread starts. If the binary can't be
/// started again, the process goes on as it is.
pub fn ensure_wait_policy() {
    if WAIT_POLICY.iter().any(|(name, _)| std::env::var_os(name).is_some()) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("hearth"));
    // Returns only if the new image could not start.
    let _ = std::process::Command::new(exe).arg0(arg0).args(args).envs(WAIT_POLICY).exec();
}
