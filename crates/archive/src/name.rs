//! Entry names as an archive states them: untrusted bytes.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Splits an entry name into its components, dropping `.` and empty ones (so `./a//b/` is
/// `[a, b]` and `.` is `[]`). Absolute names, `..` and NUL bytes are refused.
pub fn components(name: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.starts_with(b"/") {
        return Err("absolute names are not extracted");
    }
    if name.contains(&0) {
        return Err("the name holds a NUL byte");
    }
    let mut parts = Vec::new();
    for part in name.split(|byte| *byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("names with `..` are not extracted"),
            part => parts.push(OsString::from_vec(part.to_vec())),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn relative_names_split_into_components() {
        assert_eq!(components(b"./a//b/").unwrap(), ["a", "b"]);
        assert_eq!(components(b".").unwrap(), Vec::<std::ffi::OsString>::new());
        assert_eq!(components(b"a/./b").unwrap(), ["a", "b"]);
    }

    #[test]
    fn escaping_names_are_refused() {
        for bad in [&b""[..], b"/etc/passwd", b"../x", b"a/../../x", b"a/..", b"a\0b"] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
    }
}
