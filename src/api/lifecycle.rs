//! The server's life: when it started, whether it is shutting down, how to reload its config,
//! and the signal that ends open streams before the drain limit. A stream wrapped with
//! [`Lifecycle::until_shutdown`] ends with one last item of its API's shape (an `{"error"}`
//! line, an SSE error event) when the signal comes, so a client knows its answer was cut
//! rather than complete.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio::sync::watch;

pub struct Lifecycle {
    pub started: Instant,
    pub shutting_down: AtomicBool,
    /// Re-reads the config file and applies what can change live; returns a report, or why
    /// the new config was refused (the old one stays).
    pub reload: Option<Reloader>,
    streams_end: watch::Sender<bool>,
}

pub type Reloader = Box<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;

impl Lifecycle {
    pub fn new(reload: Option<Reloader>) -> Lifecycle {
        Lifecycle { started: Instant::now(), shutting_down: AtomicBool::new(false), reload, streams_end: watch::channel(false).0 }
    }

    /// Ends every open stream (each with its last item).
    pub fn end_streams(&self) {
        self.streams_end.send_replace(true);
    }

    /// `stream`, ended early with `last` once [`Lifecycle::end_streams`] is called.
    pub fn until_shutdown<S>(&self, stream: S, last: S::Item) -> impl Stream<Item = S::Item> + Send + 'static
    where
        S: Stream + Send + 'static,
        S::Item: Send + 'static,
    {
        let ended = self.streams_end.subscribe();
        futures::stream::unfold((Box::pin(stream), Some((ended, last))), |(mut stream, watch)| async move {
            let (mut ended, last) = watch?;
            let next = tokio::select! {
                biased;
                item = stream.next() => Some(item),
                Ok(_) = ended.wait_for(|e| *e) => None,
            };
            match next {
                Some(item) => item.map(|item| (item, (stream, Some((ended, last))))),
                None => Some((last, (stream, None))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_cut_at_shutdown_ends_with_its_last_item() {
        let life = Lifecycle::new(None);
        let whole: Vec<i32> = life.until_shutdown(futures::stream::iter([1, 2]), -1).collect().await;
        assert_eq!(whole, vec![1, 2], "a stream that ends by itself gets no last item");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut cut = Box::pin(life.until_shutdown(tokio_stream::wrappers::UnboundedReceiverStream::new(rx), -1));
        tx.send(7).expect("send");
        assert_eq!(cut.next().await, Some(7));
        life.end_streams();
        assert_eq!(cut.next().await, Some(-1));
        assert_eq!(cut.next().await, None);
        let late: Vec<i32> = life.until_shutdown(futures::stream::pending::<i32>(), -1).collect().await;
        assert_eq!(late, vec![-1], "a stream opened after the signal ends at once");
    }
}
