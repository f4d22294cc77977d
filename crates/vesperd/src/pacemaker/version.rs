//! Which Pacemaker the cluster's DC runs, and so whether it counts a simulated failure
//! once.
//!
//! Pacemaker 2.1.5 and earlier count the failure a fail request simulates twice (and
//! sometimes not at all during an election); upstream commit a457eb83fe fixed it in
//! 2.1.6. The DC does the counting, so the DC's version is what matters, not this node's
//! library: it is in the CIB as the `dc-version` cluster property. It is read in the
//! background (at start and every [`REFRESH`]) so that a fault never waits for it.

use std::sync::Mutex;
use std::time::Duration;

/// How often the DC's version is read again (a rolling upgrade changes it).
const REFRESH: Duration = Duration::from_secs(30);

/// A Pacemaker release as `dc-version` gives it ("2.1.5-a3f44794f94", "3.0.0-3.0.0").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release(pub u32, pub u32, pub u32);

impl Release {
    /// The first release that counts a simulated failure once.
    pub const COUNTS_ONCE: Release = Release(2, 1, 6);

    pub fn parse(dc_version: &str) -> Option<Release> {
        let number = dc_version.trim().split('-').next()?;
        let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
        Some(Release(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }

    pub fn counts_once(self) -> bool {
        self >= Release::COUNTS_ONCE
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

static KNOWN: Mutex<Option<Release>> = Mutex::new(None);

/// The DC's release as last read, if it has been.
pub fn dc_release() -> Option<Release> {
    match KNOWN.lock() {
        Ok(g) => *g,
        Err(p) => *p.into_inner(),
    }
}

fn remember(r: Release) {
    let mut g = match KNOWN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    *g = Some(r);
}

/// Reads `dc-version` now; remembers and returns it.
pub async fn read_dc_release() -> Result<Release, String> {
    let out = crate::actions::run_tool(
        "crm_attribute",
        &[
            "--type",
            "crm_config",
            "--name",
            "dc-version",
            "--query",
            "--quiet",
        ],
        None,
    )
    .await?;
    let r = Release::parse(&out).ok_or_else(|| format!("dc-version {out:?} is not a version"))?;
    remember(r);
    Ok(r)
}

/// Keeps [`dc_release`] current for the life of the process (a tokio task).
pub fn spawn_watch() {
    tokio::spawn(async {
        loop {
            let wait = match read_dc_release().await {
                Ok(_) => REFRESH,
                // No cluster yet (or none on this host): try again soon, quietly.
                Err(e) => {
                    tracing::debug!("the DC's Pacemaker version is not known yet: {e}");
                    Duration::from_secs(10)
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dc_version_tells_whether_a_simulated_failure_counts_once() {
        let r = |s| Release::parse(s).unwrap();
        assert_eq!(r("2.1.5-a3f44794f94"), Release(2, 1, 5));
        assert!(!r("2.1.5-a3f44794f94").counts_once());
        assert!(!r("2.0.5-ba59be7122").counts_once());
        assert!(r("2.1.6-6fdc9deea29").counts_once());
        assert!(r("3.0.0-3.0.0").counts_once());
        assert!(r("2.2-x").counts_once(), "a missing patch level is .0");
        assert_eq!(r("3.0.0-3.0.0").to_string(), "3.0.0");
        assert_eq!(Release::parse(""), None);
        assert_eq!(Release::parse("(null)"), None);
        assert_eq!(Release::parse("x.1.2"), None);
    }
}
