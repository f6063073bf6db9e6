//! Host files that tests make in the host's real trees (`/etc`, `/var/lib`, `/srv`), where
//! the sandbox's view of the host is what is being tested, and the guard that removes
//! them however the test ends.

use std::path::{Path, PathBuf};

/// Sets `path`'s permission bits.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
}

/// Removes host paths (files or trees) when dropped.
pub struct RemoveOnDrop(pub Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
        }
    }
}
