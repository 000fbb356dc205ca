//! Handing back the model file's pages once a model is loaded.
//!
//! llama.cpp maps the GGUF file and faults all of it in at load (`MAP_POPULATE`). Weights that
//! hearth's kernels repack (Q8_0 and Q5_0 on CPUs with AVX2: `build.rs`, `REPACKED`) are copied
//! into their own buffer, so their pages in the mapping are never read again; a tied embedding
//! is read only at the rows of the tokens in use. Left mapped, those pages count in the
//! process's RSS next to the copies (Gemma 3 270M: 652 MiB against llama-server's 401,
//! `benches/memory.sh`). `release` tells the kernel the mapping's pages are not needed now
//! (`MADV_DONTNEED`). The mapping is shared and read-only, so nothing is lost: a page that is
//! read again comes back from the page cache (or the file), and the pages llama.cpp still
//! computes with come back on the first request.

use std::path::Path;

/// Drops the page-table entries of every mapping of the file at `path` in this process (found
/// by device and inode in /proc/self/maps, so an in-memory file opened by its /proc/self/fd path
/// is found too). Returns the bytes advised.
#[cfg(target_os = "linux")]
pub fn release(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let device = format!("{:02x}:{:02x}", libc::major(meta.dev()), libc::minor(meta.dev()));
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        // start-end perms offset dev inode [path]
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, _, _, dev, inode, ..] = fields[..] else { continue };
        if dev != device || inode.parse::<u64>().ok() != Some(meta.ino()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else { continue };
        // SAFETY: the range is a whole mapping of this process, of a file mapped shared: dropping
        // its page-table entries loses no data (the next access reads the page cache again).
        // hearth maps model files only through llama.cpp, read-only and shared.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0 {
            advised += (end - start) as u64;
        }
    }
    Ok(advised)
}

#[cfg(not(target_os = "linux"))]
pub fn release(_path: &Path) -> std::io::Result<u64> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    /// This process's resident kB in the mapping that starts at `start` (/proc/self/smaps).
    fn resident_kb(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("reading smaps");
        let head = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines.next().expect("the mapping is listed");
        let rss = lines.find(|l| l.starts_with("Rss:")).expect("the mapping's Rss line");
        rss.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("an Rss figure")
    }

    #[test]
    fn a_populated_shared_mapping_is_handed_back_and_reads_the_same_after() {
        let dir = std::env::temp_dir().join(format!("hearth-pages-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("weights.bin");
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("writing the file");
        let file = std::fs::File::open(&path).expect("opening it");
        // SAFETY: maps the whole file read-only and shared, as llama.cpp does; unmapped below.
        let addr = unsafe {
            libc::mmap(std::ptr::null_mut(), data.len(), libc::PROT_READ, libc::MAP_SHARED | libc::MAP_POPULATE, file.as_raw_fd(), 0)
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let before = resident_kb(addr as usize);
        assert!(before >= 4096, "the mapping is populated ({before} kB)");

        let advised = super::release(&path).expect("reading /proc/self/maps");
        assert_eq!(advised, data.len() as u64, "the one mapping of the file is found, whole");
        let after = resident_kb(addr as usize);
        assert_eq!(after, 0, "no page of the mapping stays resident ({after} kB)");
        // SAFETY: addr maps data.len() readable bytes until the munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(addr as *const u8, data.len()) };
        assert!(mapped == &data[..], "the pages read back as the file");
        // SAFETY: the mapping made above, no longer borrowed.
        unsafe { libc::munmap(addr, data.len()) };
        std::fs::remove_dir_all(&dir).expect("removing the temp dir");
    }
}
