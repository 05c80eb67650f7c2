//! Differential test: the files a container sees of its image, under vessel and under
//! Debian's podman with runc, for the same Debian image (debootstrap minbase, built with
//! buildah) pulled from the same local registry. The same listing command runs inside
//! both; the lists must be equal but for what a runtime provides rather than the image.

mod common;

use common::images::{Podman, TestImage};
use common::registry::Registry;
use common::TestRoot;
use std::collections::BTreeMap;
use std::fmt;
use std::process::Output;

/// Run by `sh -c` inside each container: every file of the root filesystem (`-xdev`: not
/// what is mounted on it), as NUL-terminated fields (path, type, mode, uid, gid, size, links,
/// symlink target), a `sha256` marker, then `sha256sum -z` of every regular file.
const LISTING: &str = "find / -xdev -printf '%p\\0%y\\0%m\\0%U\\0%G\\0%s\\0%n\\0%l\\0' && \
     printf 'sha256\\0' && \
     find / -xdev -type f -print0 | xargs -0 -r sha256sum -z --";
const FIELDS: usize = 8;

/// Paths that come from the runtime, not the image: left out with all below them.
const PROVIDED_BY_THE_RUNTIME: &[(&str, &str)] = &[
    ("/proc", "the kernel's view of the container's processes, mounted by each runtime"),
    ("/sys", "sysfs, mounted by each runtime"),
    ("/dev", "a tmpfs of device nodes each runtime makes"),
    ("/etc/hosts", "podman bind-mounts its own (names of the container and its host)"),
    ("/etc/hostname", "podman bind-mounts one holding the container's hostname"),
    ("/etc/resolv.conf", "podman bind-mounts the host's DNS settings"),
    ("/run/.containerenv", "podman's marker file telling processes they run under podman"),
    ("/etc/mtab", "podman adds a symlink to /proc/mounts when the image has none"),
];

/// The root directory's mode is the runtime's choice: a layer's `./` entry is not applied
/// (podman ignores it too) and buildah writes none; containers/storage makes it 0555,
/// vessel 0755. Its type and owner are still compared.
const ROOT: &str = "/";

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    kind: String,
    mode: String,
    uid: String,
    gid: String,
    /// Regular files and symlinks only: a directory's size depends on the filesystem.
    size: Option<String>,
    /// Regular files only (hard links); a directory's count depends on the filesystem.
    links: Option<String>,
    target: Option<String>,
    sha256: Option<String>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:0>4} {}:{}", self.kind, self.mode, self.uid, self.gid)?;
        if let Some(size) = &self.size {
            write!(f, " size {size}")?;
        }
        if let Some(links) = &self.links {
            write!(f, " links {links}")?;
        }
        if let Some(target) = &self.target {
            write!(f, " -> {target}")?;
        }
        if let Some(sha256) = &self.sha256 {
            write!(f, " sha256 {}", &sha256[..sha256.len().min(16)])?;
        }
        Ok(())
    }
}

fn provided_by_the_runtime(path: &str) -> bool {
    PROVIDED_BY_THE_RUNTIME
        .iter()
        .any(|(p, _)| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// Parses what LISTING printed, leaving out what the runtime provides.
fn parse(who: &str, output: &Output) -> BTreeMap<String, Entry> {
    assert!(
        output.status.success(),
        "the listing failed under {who} ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields: Vec<&str> = text.split('\0').collect();
    assert_eq!(fields.pop(), Some(""), "{who}: the listing does not end with NUL");
    let marker = fields.iter().position(|f| *f == "sha256").expect("no sha256 marker");
    let (files, sums) = fields.split_at(marker);
    assert_eq!(files.len() % FIELDS, 0, "{who}: a file's fields are cut short");
    let mut entries = BTreeMap::new();
    for record in files.chunks(FIELDS) {
        let [path, kind, mode, uid, gid, size, links, target] = record else { unreachable!() };
        let (file, symlink) = (*kind == "f", *kind == "l");
        let entry = Entry {
            kind: kind.to_string(),
            mode: if *path == ROOT { "-".into() } else { mode.to_string() },
            uid: uid.to_string(),
            gid: gid.to_string(),
            size: (file || symlink).then(|| size.to_string()),
            links: file.then(|| links.to_string()),
            target: symlink.then(|| target.to_string()),
            sha256: None,
        };
        entries.insert(path.to_string(), entry);
    }
    for sum in &sums[1..] {
        let (sha256, path) = sum.split_once("  ").unwrap_or_else(|| panic!("{who}: {sum:?}"));
        let entry = entries.get_mut(path).unwrap_or_else(|| panic!("{who}: hashed {path}"));
        entry.sha256 = Some(sha256.to_string());
    }
    entries.retain(|path, _| !provided_by_the_runtime(path));
    entries
}

/// The first differences, one line each, or None when both lists are equal.
fn differences(
    vessel: &BTreeMap<String, Entry>,
    podman: &BTreeMap<String, Entry>,
) -> Option<String> {
    let mut lines = Vec::new();
    let paths: std::collections::BTreeSet<&String> = vessel.keys().chain(podman.keys()).collect();
    for path in paths {
        match (vessel.get(path), podman.get(path)) {
            (Some(v), Some(p)) if v == p => {}
            (Some(v), Some(p)) => {
                lines.push(format!("  {path}\n      vessel: {v}\n      podman: {p}"))
            }
            (Some(v), None) => lines.push(format!("  {path}: only under vessel: {v}")),
            (None, Some(p)) => lines.push(format!("  {path}: only under podman: {p}")),
            (None, None) => unreachable!(),
        }
    }
    if lines.is_empty() {
        return None;
    }
    let total = lines.len();
    lines.truncate(40);
    Some(format!(
        "vessel and podman see different files in the Debian image ({total} paths differ, \
         first {} shown):\n{}",
        lines.len(),
        lines.join("\n")
    ))
}

#[test]
fn debian_files_look_the_same_as_under_podman() {
    let registry = Registry::start();
    let image = TestImage::Debian.push(&registry);

    let root = TestRoot::new();
    root.ok(&["pull", "-q", &image]);
    let output = root.run(&["run", "--rm", "--pull", "never", &image, "sh", "-c", LISTING]);
    let vessel = parse("vessel", &output);

    let podman = Podman::new();
    podman.pull(&image);
    let output = podman
        .command(&["run", "--rm", "--runtime", "runc", &image, "sh", "-c", LISTING])
        .output()
        .expect("cannot run podman");
    let podman = parse("podman", &output);

    // The listing saw the image, hard links included, not some empty or partial tree.
    assert!(podman.len() > 5000, "only {} files under podman", podman.len());
    let bash = &podman["/usr/bin/bash"];
    assert!(bash.sha256.is_some() && bash.mode == "755", "{bash}");
    assert_eq!(podman["/usr/bin/perl"].links.as_deref(), Some("2"));
    if let Some(report) = differences(&vessel, &podman) {
        panic!("{report}");
    }
}

/// The comparison itself, on made-up listings: what it reports and what it leaves out.
#[test]
fn differences_name_each_path_and_field() {
    use std::os::unix::process::ExitStatusExt;
    let listing = |files: &[[&str; FIELDS]], sums: &[&str]| {
        let mut out = String::new();
        for field in files.iter().flatten().chain(&["sha256"]).chain(sums) {
            out.push_str(field);
            out.push('\0');
        }
        Output { status: ExitStatusExt::from_raw(0), stdout: out.into_bytes(), stderr: Vec::new() }
    };
    let vessel = listing(
        &[
            ["/", "d", "755", "0", "0", "4096", "18", ""],
            ["/etc/hostname", "f", "644", "0", "0", "4", "1", ""],
            ["/bin", "l", "777", "0", "0", "7", "1", "usr/bin"],
            ["/a", "f", "644", "0", "0", "2", "1", ""],
            ["/lost+found", "d", "700", "0", "0", "16384", "2", ""],
        ],
        &["aa  /etc/hostname", "bb  /a"],
    );
    let podman = listing(
        &[
            ["/", "d", "555", "0", "0", "4096", "1", ""],
            ["/proc", "d", "555", "0", "0", "0", "80", ""],
            ["/bin", "l", "777", "0", "0", "7", "1", "usr/bin"],
            ["/a", "f", "600", "0", "0", "2", "1", ""],
        ],
        &["bb  /a"],
    );
    let report = differences(&parse("vessel", &vessel), &parse("podman", &podman)).unwrap();
    assert!(report.contains("(2 paths differ"), "{report}");
    assert!(
        report.contains("  /a\n      vessel: f 0644 0:0 size 2 links 1 sha256 bb\n"),
        "{report}"
    );
    assert!(report.contains("      podman: f 0600 0:0 size 2 links 1 sha256 bb"), "{report}");
    assert!(report.contains("  /lost+found: only under vessel: d 0700 0:0"), "{report}");
}
