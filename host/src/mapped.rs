//! Reading a large file without copying it: the sender maps it and hashes, encodes and seals straight
//! from the page cache (the copy of `pread` was 17 % of its CPU). A mapped file that shrinks kills the
//! process with SIGBUS on the next access, so the map is used only under a read lease (fcntl
//! F_SETLEASE): anyone who then opens the file for writing or truncates it waits (up to
//! /proc/sys/fs/lease-break-time, 45 s by default) while the lease is broken; the sender checks the lease
//! before every group of blocks (a fraction of a second on the fast links it maps files for), drops the
//! map, which gives the lease up and lets the writer go on, and reads with `pread` from then on (whose
//! short read is an ordinary error). Where there is no lease to be had (the file is someone else's and the sender
//! lacks CAP_LEASE, or it is open for writing somewhere, or the filesystem has no leases), nothing is
//! mapped and the caller reads as before.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Once;

/// Files smaller than this are read: a map costs more than the copy it saves.
pub const MAP_MIN: u64 = 8 << 20;

pub struct Mapped {
    map: memmap2::Mmap,
    fd: RawFd,
}

impl Mapped {
    /// Map `file` (opened read-only, `size` bytes) under a read lease; None where that is not possible.
    pub fn open(file: &File, size: u64) -> Option<Mapped> {
        if size < MAP_MIN {
            return None;
        }
        ignore_sigio();
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this process owns, integer arguments only
        if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
            return None;
        }
        let m = Mapped::map(file, size).map(|map| Mapped { map, fd });
        if m.is_none() {
            release(fd);
        }
        m
    }

    fn map(file: &File, size: u64) -> Option<memmap2::Mmap> {
        // under the lease nobody can have the file open for writing, so its length is settled
        if file.metadata().ok()?.len() != size {
            return None;
        }
        let len = usize::try_from(size).ok()?;
        // SAFETY: the file cannot be truncated or written while the lease holds (see the module
        // comment), and `bytes` checks the lease before every use of the map
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }.ok()?;
        let _ = map.advise(memmap2::Advice::Sequential);
        Some(map)
    }

    /// The lease still holds: false once it is breaking (someone wants to write or truncate the file).
    /// Then the caller drops the map, which gives the lease up, and reads with `pread`.
    pub fn held(&self) -> bool {
        // SAFETY: fcntl on a descriptor this process owns, integer arguments only
        unsafe { libc::fcntl(self.fd, libc::F_GETLEASE) == libc::F_RDLCK }
    }

    /// `len` bytes at `offset`, None outside the file. Use only while `held` was true a moment ago.
    pub fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.map.get(start..start.checked_add(len)?)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        release(self.fd);
    }
}

fn release(fd: RawFd) {
    // SAFETY: as above
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
}

/// A lease break is announced with SIGIO, whose default action ends the process: the sender polls the
/// lease instead.
fn ignore_sigio() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Mapped while nobody writes; a writer that opens the file breaks the lease, `bytes` says so at
    /// once, and the writer gets through once the map is dropped. No SIGBUS however the file changes.
    #[test]
    fn a_writer_breaks_the_lease_and_the_map_is_given_up() {
        let dir = std::env::temp_dir().join(format!("diode-mapped-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("f");
        let data: Vec<u8> = (0..MAP_MIN as usize + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let Some(m) = Mapped::open(&f, data.len() as u64) else {
            // no lease here (not the owner, no CAP_LEASE): the caller reads instead; nothing to test
            eprintln!("no lease on this machine: skipped");
            return;
        };
        assert_eq!(m.bytes(4096, 100).unwrap(), &data[4096..4196]);
        assert!(
            m.bytes(data.len() as u64 - 10, 11).is_none(),
            "past the end"
        );
        // another thread truncates the file: it blocks until the lease is given up
        let p2 = path.clone();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p2)
                .unwrap();
            w.write_all(b"short").unwrap();
        });
        let t = std::time::Instant::now();
        while m.held() {
            assert!(
                t.elapsed().as_secs() < 10,
                "the lease never started breaking"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            !writer.is_finished(),
            "the writer got through before the lease was given up"
        );
        drop(m);
        writer.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
