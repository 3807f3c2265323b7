//! Small filesystems mounted for a test (root only), so that "the disk is full" is a real disk filling
//! up: a tmpfs of a given size, or an ext4 image on a loop device. Unmounted when dropped.

use crate::run_ok;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (as mount's `size=`, e.g. `48m`) at `dir`.
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(dir),
        );
        Mount(dir.to_path_buf())
    }

    /// An ext4 filesystem of `mib` MiB in the file `image`, at `dir`, with no blocks reserved for root
    /// (so full means full for the daemons too, which run as root in CI).
    pub fn ext4(image: &Path, dir: &Path, mib: u64) -> Mount {
        fs::create_dir_all(dir).unwrap();
        fs::File::create(image).unwrap().set_len(mib << 20).unwrap();
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(image),
        );
        run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(image)
                .arg(dir),
        );
        Mount(dir.to_path_buf())
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        let out = run_ok(
            Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(&self.0),
        );
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}
