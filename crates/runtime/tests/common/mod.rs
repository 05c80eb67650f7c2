//! Helpers shared by the runtime's VM tests.

use std::path::Path;

/// `e2fsck -fn` finds nothing to fix in `image` (a clean journal included).
pub fn assert_fsck_clean(image: &Path) {
    let output = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck is needed (apt-get install e2fsprogs)");
    assert!(
        output.status.success(),
        "e2fsck {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
