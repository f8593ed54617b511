//! Persistent reservations that survive a tgtd restart (APTPL, SPC-4 §5.9.5).
//!
//! The SCSI layer hands over its serialized reservation state whenever a
//! PERSISTENT RESERVE OUT with APTPL changes it; this module keeps it in a
//! file beside the backing file (`disk.img` → `disk.img.pr`), written to a
//! temporary name, synced and renamed so a crash leaves the old state or the
//! new one, never half of either. Backing stores that are not regular files
//! (block devices, `null`) keep theirs under [`STATE_DIR`], named after the
//! escaped path. When a logical unit is created the file, if any, is read
//! back and restored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use rtgt_scsi::LogicalUnit;

/// Where the state of stores that are not regular files lives.
pub const STATE_DIR: &str = "/var/lib/rtgt/pr";

/// The state file of the LU whose backing store is `backing`.
pub fn state_path(backing: &Path) -> PathBuf {
    match fs::metadata(backing) {
        Ok(m) if m.is_file() => {
            let mut name = backing.as_os_str().to_owned();
            name.push(".pr");
            PathBuf::from(name)
        }
        _ => {
            let escaped: String = backing
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            Path::new(STATE_DIR).join(format!("{escaped}.pr"))
        }
    }
}

/// Restore `lu`'s reservations from `path` if it exists, and keep them there
/// from now on.
pub fn attach(lu: &Arc<LogicalUnit>, path: PathBuf) {
    match fs::read(&path) {
        Ok(bytes) => match lu.restore_reservations(&bytes) {
            Ok(()) => info!(
                "LUN {}: persistent reservations restored from {}",
                lu.lun(),
                path.display()
            ),
            Err(e) => warn!(
                "LUN {}: ignoring unreadable reservation state {}: {e}",
                lu.lun(),
                path.display()
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("LUN {}: {}: {e}", lu.lun(), path.display()),
    }
    let lun = lu.lun();
    lu.set_pr_persistence(Box::new(move |state| {
        let result = match state {
            Some(bytes) => write_atomically(&path, bytes),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = result {
            warn!(
                "LUN {lun}: cannot keep reservation state in {}: {e}",
                path.display()
            );
        }
    }));
}

/// Write `bytes` to `path` so that a crash leaves either the old content or the
/// new: temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtgt_scsi::LuConfig;

    #[test]
    fn file_stores_keep_state_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        fs::write(&img, b"").unwrap();
        assert_eq!(state_path(&img), dir.path().join("disk.img.pr"));
        let dev = state_path(Path::new("/dev/null"));
        assert!(dev.starts_with(STATE_DIR), "{dev:?}");
    }

    #[test]
    fn state_written_atomically_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("x.pr");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("sub").join("x.pr.tmp").exists());

        // A garbage file is ignored, not a panic, and not restored.
        fs::write(&path, b"garbage").unwrap();
        let lu = Arc::new(LogicalUnit::new(1, LuConfig::disk_defaults(1, 1)));
        attach(&lu, path);
        assert!(lu.reservation_keys().is_empty());
    }
}
