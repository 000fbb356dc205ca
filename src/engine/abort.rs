//! Stopping a decode when a client whose tokens it holds has left, so that a hang-up frees the
//! CPU at once even while a whole batch of prompt is being read. llama.cpp asks an abort
//! callback between the nodes of its compute graph (`llama_set_abort_callback`); a decode it
//! stops returns 2 and leaves nothing of its batch in the KV cache (with `n_ubatch = n_batch`,
//! one batch is one ubatch). The worker then takes the batch back as if it had not been sent
//! and drops the departed requests before the next step.
//!
//! Before this, prompts were read in chunks sized to about 150 ms so that a departure was
//! noticed between steps; chunks that small cost 8-18% of prefill against whole batches
//! (SmolLM2 and Gemma 3, `benches/compare.sh`, 2-vCPU Xeon).
//!
//! llama-cpp-2 (pinned to one version in Cargo.toml) doesn't wrap the callback and keeps the
//! context's raw pointer private, but its `Debug` output is that pointer: `context_ptr` reads
//! it there. A llama-cpp-2 whose output changes makes `install` fail, which fails the model's
//! load with a message (and the tests) rather than decode without a way to stop.
//! Must not: decide who left (the channels say) or touch the KV cache (the worker takes back).

use std::ffi::c_void;
use std::sync::Mutex;

use llama_cpp_2::context::LlamaContext;
use tokio::sync::mpsc::UnboundedSender;

use super::Event;

/// What `llama_decode` returns for a decode its abort callback stopped.
pub(super) const ABORTED: i32 = 2;

/// The requests whose tokens are in the batch being decoded. Declare it before the context it
/// is installed on, so that it is dropped after it: llama.cpp keeps a pointer to it.
#[derive(Default)]
pub(super) struct AbortWatch {
    watched: Mutex<Vec<UnboundedSender<Event>>>,
}

impl AbortWatch {
    /// Makes llama.cpp ask this watch, during each decode on `ctx`, whether to stop.
    pub(super) fn install(&self, ctx: &LlamaContext) -> Result<(), String> {
        let ptr = context_ptr(ctx).ok_or("cannot reach llama.cpp's context to install the abort callback (llama-cpp-2 changed?)")?;
        let data = std::ptr::from_ref(self).cast_mut().cast::<c_void>();
        // SAFETY: `ptr` is `ctx`'s live llama_context. `data` points to `self`, which the
        // caller keeps alive (and unmoved) for as long as the context.
        unsafe { llama_cpp_sys_2::llama_set_abort_callback(ptr, Some(should_abort), data) };
        Ok(())
    }

    /// The next decode stops if one of these requests' clients leaves.
    pub(super) fn watch(&self, events: impl Iterator<Item = UnboundedSender<Event>>) {
        let mut watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.clear();
        watched.extend(events);
    }

    pub(super) fn clear(&self) {
        self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    fn anyone_left(&self) -> bool {
        self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(UnboundedSender::is_closed)
    }
}

extern "C" fn should_abort(data: *mut c_void) -> bool {
    // SAFETY: `data` is the `AbortWatch` `install` registered, alive while its context is.
    let watch = unsafe { &*data.cast_const().cast::<AbortWatch>() };
    watch.anyone_left()
}

/// The raw context behind `ctx`, read from its `Debug` output (`LlamaContext { context: 0x… }`).
fn context_ptr(ctx: &LlamaContext) -> Option<*mut llama_cpp_sys_2::llama_context> {
    pointer_in(&format!("{ctx:?}")).map(std::ptr::with_exposed_provenance_mut)
}

/// The first non-zero `0x…` address in `debug`.
fn pointer_in(debug: &str) -> Option<usize> {
    let hex: String = debug.split_once("0x")?.1.chars().take_while(char::is_ascii_hexdigit).collect();
    usize::from_str_radix(&hex, 16).ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointer_is_read_from_the_debug_output() {
        assert_eq!(pointer_in("LlamaContext { context: 0x55d0c1a2b3c0 }"), Some(0x55d0_c1a2_b3c0));
        assert_eq!(pointer_in("LlamaContext { context: 0x0 }"), None);
        assert_eq!(pointer_in("LlamaContext { .. }"), None);
    }

    #[test]
    fn a_watch_says_stop_once_a_watched_client_has_left() {
        let watch = AbortWatch::default();
        let (stays, _kept) = tokio::sync::mpsc::unbounded_channel();
        let (leaves, gone) = tokio::sync::mpsc::unbounded_channel();
        watch.watch([stays.clone(), leaves.clone()].into_iter());
        assert!(!watch.anyone_left());
        drop(gone);
        assert!(watch.anyone_left());
        watch.watch(std::iter::once(stays));
        assert!(!watch.anyone_left());
        watch.watch(std::iter::once(leaves));
        watch.clear();
        assert!(!watch.anyone_left());
    }
}
