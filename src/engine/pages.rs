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
//!
//! A page that comes back may bring its neighbours: where the page cache holds the file in large
//! folios (ext4 on Linux 6.18 here, 2 MiB each), a fault maps the whole folio, but never past the
//! mapping's region (VMA). Gemma 3 keeps its Q5_0 matrices next to the Q4_K and Q6_K ones it
//! computes with from the file, so the first request brought back 41 MiB of repacked Q5_0 pages
//! (69 MiB of the file resident instead of 30). `release` therefore first splits the mapping into
//! one region per tensor, marking every other tensor's pages `MADV_DONTDUMP` (left out of core
//! dumps, which don't need the weights; the kernel keeps regions with different flags apart).

use std::path::Path;

/// Drops the page-table entries of every mapping of the file at `path` in this process (found
/// by device and inode in /proc/self/maps, so an in-memory file opened by its /proc/self/fd path
/// is found too), first splitting each mapping at the page boundaries inside `spans` (the
/// file's tensors, [start, end) in file order: `GgufInfo::tensor_spans`). Returns the bytes
/// advised.
#[cfg(target_os = "linux")]
pub fn release(path: &Path, spans: &[(u64, u64)]) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let device = format!("{:02x}:{:02x}", libc::major(meta.dev()), libc::minor(meta.dev()));
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        // start-end perms offset dev inode [path]
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, _, offset, dev, inode, ..] = fields[..] else { continue };
        if dev != device || inode.parse::<u64>().ok() != Some(meta.ino()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16), u64::from_str_radix(offset, 16)) else {
            continue;
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        for (from, to) in spans.iter().skip(1).step_by(2).filter_map(|&s| inner_pages(s, page, offset, start, end)) {
            // SAFETY: a page-aligned range inside a mapping of this process; the advice changes
            // only what a core dump holds.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTDUMP) };
        }
        // SAFETY: the range is a whole mapping of this process, of a file mapped shared: dropping
        // its page-table entries loses no data (the next access reads the page cache again).
        // hearth maps model files only through llama.cpp, read-only and shared.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0 {
            advised += (end - start) as u64;
        }
    }
    Ok(advised)
}

/// The whole pages (of `page` bytes) of the file bytes `span` inside the mapping of
/// `start..end` that begins at file offset `offset`, as addresses; None if no whole page of it is
/// mapped there.
fn inner_pages(span: (u64, u64), page: u64, offset: u64, start: usize, end: usize) -> Option<(usize, usize)> {
    let mapped = offset..offset + (end - start) as u64;
    let first = span.0.max(mapped.start).next_multiple_of(page);
    let last = span.1.min(mapped.end) / page * page;
    (first < last).then(|| (start + (first - offset) as usize, start + (last - offset) as usize))
}

#[cfg(not(target_os = "linux"))]
pub fn release(_path: &Path, _spans: &[(u64, u64)]) -> std::io::Result<u64> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    const MIB: usize = 1 << 20;

    /// How many pages of this process's `from..to` are mapped (/proc/self/pagemap's present bit).
    fn mapped_pages(from: usize, to: usize) -> usize {
        use std::os::unix::fs::FileExt;
        let pagemap = std::fs::File::open("/proc/self/pagemap").expect("opening pagemap");
        (from / 4096..to.div_ceil(4096))
            .filter(|page| {
                let mut entry = [0u8; 8];
                pagemap.read_exact_at(&mut entry, (*page * 8) as u64).expect("reading pagemap");
                u64::from_le_bytes(entry) >> 63 == 1
            })
            .count()
    }

    /// How many regions of /proc/self/maps lie in `from..to`.
    fn regions(from: usize, to: usize) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("reading maps");
        maps.lines()
            .filter_map(|l| l.split_whitespace().next()?.split_once('-').map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))))
            .filter(|r| matches!(r, (Ok(a), Ok(b)) if *a >= from && *b <= to))
            .count()
    }

    #[test]
    fn a_populated_shared_mapping_is_handed_back_split_by_tensor_and_reads_the_same_after() {
        let dir = std::env::temp_dir().join(format!("hearth-pages-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("weights.bin");
        let data: Vec<u8> = (0..8 * MIB as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("writing the file");
        let file = std::fs::File::open(&path).expect("opening it");
        // SAFETY: maps the whole file read-only and shared, as llama.cpp does; unmapped below.
        let addr = unsafe {
            libc::mmap(std::ptr::null_mut(), data.len(), libc::PROT_READ, libc::MAP_SHARED | libc::MAP_POPULATE, file.as_raw_fd(), 0)
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let (start, end) = (addr as usize, addr as usize + data.len());
        let before = mapped_pages(start, end);
        assert_eq!(before, data.len() / 4096, "the mapping is populated");

        // Three "tensors", the first ending inside a page.
        let spans = [(0, 2 * MIB as u64 + 100), (2 * MIB as u64 + 100, 6 * MIB as u64), (6 * MIB as u64, 8 * MIB as u64)];
        let advised = super::release(&path, &spans).expect("reading /proc/self/maps");
        assert_eq!(advised, data.len() as u64, "the one mapping of the file is found, whole");
        assert_eq!(mapped_pages(start, end), 0, "no page of the mapping stays mapped");
        assert_eq!(regions(start, end), 3, "one region per tensor");

        // Reading the first tensor's last page brings back none of the second's pages (where the
        // page cache holds the file in large folios, a fault maps the whole folio, up to 2 MiB
        // from 2 MiB on, within the region).
        // SAFETY: addr maps data.len() readable bytes until the munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(addr as *const u8, data.len()) };
        assert_eq!(mapped[2 * MIB + 50], data[2 * MIB + 50]);
        assert_eq!(mapped_pages(start + 2 * MIB + 4096, start + 6 * MIB), 0, "the second tensor's pages stay out");
        assert!(mapped == &data[..], "the pages read back as the file");
        // SAFETY: the mapping made above, no longer borrowed.
        unsafe { libc::munmap(addr, data.len()) };
        std::fs::remove_dir_all(&dir).expect("removing the temp dir");
    }

    #[test]
    fn inner_pages_are_the_whole_pages_of_a_span_that_are_mapped() {
        // A mapping of file bytes 8192.. at address 0x10000.
        let (offset, start, end) = (8192, 0x10000, 0x10000 + 40960);
        assert_eq!(super::inner_pages((8192, 16384), 4096, offset, start, end), Some((0x10000, 0x12000)));
        assert_eq!(super::inner_pages((8000, 16500), 4096, offset, start, end), Some((0x10000, 0x12000)), "clipped to the mapping, partial pages left out");
        assert_eq!(super::inner_pages((9000, 12000), 4096, offset, start, end), None, "no whole page");
        assert_eq!(super::inner_pages((0, 4096), 4096, offset, start, end), None, "before the mapping");
        assert_eq!(super::inner_pages((40000, 100000), 4096, offset, start, end), Some((0x10000 + 32768, 0x10000 + 40960)));
    }
}
