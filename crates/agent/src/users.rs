//! Resolving `--user` values in a container's own /etc/passwd and /etc/group, as docker does.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group in /etc/group that lists the user by name.
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) against the files of
/// the container whose root is `rootfs`. A numeric uid missing from /etc/passwd is fine
/// (gid 0, as docker does); a name that is missing is an error.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<Identity, String> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    resolve_in(&passwd, &group, spec)
}

fn resolve_in(passwd: &str, group: &str, spec: &str) -> Result<Identity, String> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|fields| fields.len() >= 7)
        .collect();
    let entry = match user.parse::<u32>() {
        Ok(uid) => entries.iter().find(|f| f[2].parse() == Ok(uid)),
        Err(_) => Some(entries.iter().find(|f| f[0] == user).ok_or_else(|| {
            format!("unable to find user {user}: no matching entries in passwd file")
        })?),
    };
    let uid = match entry {
        Some(fields) => {
            fields[2].parse().map_err(|_| format!("bad uid for user {user} in passwd"))?
        }
        None => user.parse().unwrap_or(0),
    };
    let mut gid: u32 = match entry {
        Some(fields) => fields[3].parse().unwrap_or(0),
        None => 0,
    };
    let name = entry.map(|fields| fields[0]).unwrap_or("");
    let home = entry.map(|fields| fields[5].to_string()).unwrap_or_else(|| "/".to_string());
    let groups_file: Vec<Vec<&str>> = group
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|fields| fields.len() >= 4)
        .collect();
    if let Some(group_spec) = group_spec {
        gid = match group_spec.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups_file
                .iter()
                .find(|f| f[0] == group_spec)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {group_spec}: no matching entries in group file")
                })?,
        };
    }
    let mut groups: Vec<u32> = if name.is_empty() {
        Vec::new()
    } else {
        groups_file
            .iter()
            .filter(|f| f[3].split(',').any(|member| member == name))
            .filter_map(|f| f[2].parse().ok())
            .collect()
    };
    groups.retain(|&g| g != gid);
    groups.insert(0, gid);
    groups.dedup();
    Ok(Identity { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\naudio:x:29:www\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let root = resolve_in(PASSWD, GROUP, "").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let www = resolve_in(PASSWD, GROUP, "www").unwrap();
        assert_eq!((www.uid, www.gid), (33, 33));
        assert_eq!(www.groups, vec![33, 50, 29]);
        assert_eq!(resolve_in(PASSWD, GROUP, "33").unwrap().groups, vec![33, 50, 29]);
        let custom = resolve_in(PASSWD, GROUP, "www:staff").unwrap();
        assert_eq!((custom.uid, custom.gid), (33, 50));
        let numeric = resolve_in(PASSWD, GROUP, "1234:5678").unwrap();
        assert_eq!((numeric.uid, numeric.gid, numeric.groups.clone()), (1234, 5678, vec![5678]));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve_in(PASSWD, GROUP, "nobody").unwrap_err().contains("unable to find user"));
        assert!(resolve_in(PASSWD, GROUP, "www:nogroup").is_err());
    }
}
