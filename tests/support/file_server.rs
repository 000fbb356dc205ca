//! A loopback HTTP file server for pull tests: serves one file at any path, honours
//! `Range: bytes=N-`, and can cut the connection after a number of body bytes to simulate an
//! interrupted download. Counts the body bytes it sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct FileServer {
    pub port: u16,
    /// Body bytes sent so far, over all requests.
    pub sent: Arc<AtomicU64>,
    /// When set, the next response stops after this many body bytes (then the flag clears).
    pub cut_after: Arc<AtomicU64>,
    /// When set, Range headers are ignored (a server without resume support).
    pub ignore_range: Arc<AtomicBool>,
    /// Microseconds to wait after each 64 KiB sent (0: as fast as it goes), so a download
    /// lasts long enough to report progress on its way.
    pub pace_us: Arc<AtomicU64>,
}

impl FileServer {
    pub fn start(file: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sent = Arc::new(AtomicU64::new(0));
        let cut_after = Arc::new(AtomicU64::new(0));
        let ignore_range = Arc::new(AtomicBool::new(false));
        let pace_us = Arc::new(AtomicU64::new(0));
        let (s, c, i, p) = (sent.clone(), cut_after.clone(), ignore_range.clone(), pace_us.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (file, s, c, i, p) = (file.clone(), s.clone(), c.clone(), i.clone(), p.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &file, &s, &c, &i, &p);
                });
            }
        });
        FileServer { port, sent, cut_after, ignore_range, pace_us }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn serve(mut stream: TcpStream, file: &PathBuf, sent: &AtomicU64, cut: &AtomicU64, ignore_range: &AtomicBool, pace_us: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut start = 0u64;
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            if !ignore_range.load(Ordering::SeqCst) {
                start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
            }
        }
    }
    let data = std::fs::read(file)?;
    let total = data.len() as u64;
    if first.starts_with("HEAD") || !first.starts_with("GET") {
        write!(stream, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    if start >= total && start > 0 {
        write!(stream, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let body = &data[start as usize..];
    if start > 0 {
        write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
            body.len(),
            total - 1
        )?;
    } else {
        write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n")?;
    }
    let limit = cut.swap(0, Ordering::SeqCst);
    let body = if limit > 0 { &body[..(limit as usize).min(body.len())] } else { body };
    for chunk in body.chunks(64 * 1024) {
        stream.write_all(chunk)?;
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        let pace = pace_us.load(Ordering::SeqCst);
        if pace > 0 {
            std::thread::sleep(std::time::Duration::from_micros(pace));
        }
    }
    stream.flush()?;
    // Closing early (after a cut) ends the response short of its Content-Length.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Ok(())
}
