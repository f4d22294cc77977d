//! Who may use the control API. Loading a probe runs code in a guest's kernel, so the
//! socket is owner-only by default (mode 0600), or shared with one group
//! (`[daemon] socket_group`, mode 0660). Each connection's peer credentials (SO_PEERCRED)
//! are checked again, so a socket whose mode was loosened by hand still admits only root,
//! vesperd's own user and the group's members; and they name who asked, for the log.
//!
//! Users and groups are read from /etc/passwd and /etc/group (pure parsing, no NSS): a
//! group managed elsewhere (LDAP) is not seen, and the error says so.

use std::path::Path;

/// A group from /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    /// User names listed as members (supplementary).
    pub members: Vec<String>,
}

/// The credentials of a control connection's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "[daemon] socket_group {0:?}: no such group in /etc/group; create it (groupadd {0}) or remove the setting"
    )]
    NoGroup(String),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// `name`'s entry in the text of /etc/group.
pub fn parse_group(etc_group: &str, name: &str) -> Option<Group> {
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        let n = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        (n == name).then(|| Group {
            name: n.to_string(),
            gid,
            members,
        })
    })
}

/// The user name of `uid` in the text of /etc/passwd.
pub fn user_name(etc_passwd: &str, uid: u32) -> Option<String> {
    etc_passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        (f.next()?.trim().parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

fn read(path: &str) -> Result<String, AccessError> {
    std::fs::read_to_string(path).map_err(|source| AccessError::Read {
        path: path.into(),
        source,
    })
}

/// The effective uid of this process, from /proc/self/status (`Uid: real effective …`).
pub fn own_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether `uid` is Pacemaker's own user (`hacluster`), which may fail resources.
pub fn is_hacluster(uid: u32) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| user_name(&p, uid))
        .is_some_and(|n| n == "hacluster")
}

/// The control API's access policy.
#[derive(Debug, Clone)]
pub struct Access {
    pub own_uid: u32,
    pub group: Option<Group>,
}

impl Access {
    /// The policy for `[daemon] socket_group` (None: owner-only).
    pub fn new(socket_group: Option<&str>) -> Result<Access, AccessError> {
        let group = match socket_group {
            Some(name) => Some(
                parse_group(&read("/etc/group")?, name)
                    .ok_or_else(|| AccessError::NoGroup(name.into()))?,
            ),
            None => None,
        };
        Ok(Access {
            own_uid: own_uid(),
            group,
        })
    }

    /// Ok, or the one-line reason the peer is refused. `passwd` is /etc/passwd's text,
    /// read only when group membership must be looked up by name.
    pub fn check(&self, peer: Peer, passwd: impl FnOnce() -> String) -> Result<(), String> {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Ok(());
        }
        if let Some(g) = &self.group {
            if peer.gid == g.gid {
                return Ok(());
            }
            if user_name(&passwd(), peer.uid).is_some_and(|u| g.members.contains(&u)) {
                return Ok(());
            }
            return Err(format!(
                "permission denied: uid {} is not root, vesperd's user or a member of group {} (add the user to it)",
                peer.uid, g.name
            ));
        }
        Err(format!(
            "permission denied: uid {} is not root or vesperd's user; set [daemon] socket_group to share the control socket with a group",
            peer.uid
        ))
    }

    /// Applies the socket's mode and group after bind.
    pub fn secure_socket(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        match &self.group {
            Some(g) => {
                std::os::unix::fs::chown(path, None, Some(g.gid))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            }
            None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)),
        }
    }
}

/// "uid 0 pid 123 (vesper)": who asked, for the log.
pub fn describe(peer: Option<Peer>) -> String {
    let Some(p) = peer else {
        return "an unknown peer".into();
    };
    match p.pid {
        Some(pid) => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("uid {} pid {pid} ({})", p.uid, comm.trim())
        }
        None => format!("uid {}", p.uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "root:x:0:\nvesper:x:990:alice, bob\nnogroup:x:65534:\n";
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\ncarol:x:1003:1003::/:/bin/sh\n";

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
        }
    }

    #[test]
    fn groups_and_users_are_read_from_the_files() {
        let g = parse_group(GROUP, "vesper").unwrap();
        assert_eq!(
            (g.gid, g.members.clone()),
            (990, vec!["alice".to_string(), "bob".to_string()])
        );
        assert_eq!(
            parse_group(GROUP, "nogroup").unwrap().members,
            Vec::<String>::new()
        );
        assert!(parse_group(GROUP, "vesp").is_none());
        assert!(parse_group("broken line\n", "broken line").is_none());
        assert_eq!(user_name(PASSWD, 1001).as_deref(), Some("alice"));
        assert_eq!(user_name(PASSWD, 4242), None);
    }

    #[test]
    fn owner_only_admits_root_and_vesperds_user() {
        let a = Access {
            own_uid: 500,
            group: None,
        };
        assert!(a.check(peer(0, 0), String::new).is_ok());
        assert!(a.check(peer(500, 500), String::new).is_ok());
        let e = a.check(peer(1001, 990), || PASSWD.into()).unwrap_err();
        assert!(e.contains("uid 1001") && e.contains("socket_group"), "{e}");
    }

    #[test]
    fn a_socket_group_admits_its_primary_and_listed_members() {
        let a = Access {
            own_uid: 0,
            group: parse_group(GROUP, "vesper"),
        };
        assert!(
            a.check(peer(2000, 990), || PASSWD.into()).is_ok(),
            "primary gid"
        );
        assert!(
            a.check(peer(1001, 1001), || PASSWD.into()).is_ok(),
            "alice is listed"
        );
        let e = a.check(peer(1003, 1003), || PASSWD.into()).unwrap_err();
        assert!(e.contains("group vesper"), "{e}");
    }
}
