//! Network-namespace scaffolding for the multi-host cluster tests: namespaces that each count
//! as a separate host (their own `/etc/netns/NS/machine-id`), deleted with their files when the
//! [`Netns`] guard drops. Needs root and iproute2; [`unavailable`] says why a test must skip.

use std::process::Command;

/// Runs `ip ARGS`; its stderr as the error when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespaces cannot be built here (not root, no iproute2, no /etc/machine-id to stand
/// in for); `None` when they can.
pub fn unavailable() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces");
    }
    if ip(&["netns", "list"]).is_err() {
        return Some("`ip netns` (iproute2) is not available");
    }
    if std::fs::metadata("/etc/machine-id").is_err() {
        return Some("no /etc/machine-id to give each namespace its own host identity");
    }
    None
}

/// The namespaces a test made; deletes them (and the links in them) and their /etc/netns files
/// on drop.
#[derive(Default)]
pub struct Netns(pub Vec<String>);

impl Netns {
    /// Adds namespace `name` that is its own host: `ip netns exec` binds
    /// /etc/netns/NAME/machine-id over /etc/machine-id, where a node takes its host identity
    /// from. Its loopback is up.
    pub fn add_host(&mut self, name: &str, host_id: u128) -> Result<(), String> {
        self.0.push(name.to_string());
        ip(&["netns", "add", name])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        let etc = format!("/etc/netns/{name}");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{etc}: {e}"))?;
        std::fs::write(format!("{etc}/machine-id"), format!("{host_id:032x}\n"))
            .map_err(|e| format!("{etc}/machine-id: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ip(&["netns", "del", n]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{n}"));
        }
        // Only when empty: other users of `ip netns` may keep files there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// The wrapper that runs a command in namespace `ns`.
pub fn wrap(ns: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns].map(String::from).to_vec()
}

/// A counter of `dev` (e.g. `rx_bytes`) as seen inside namespace `ns`.
pub fn link_stat(ns: &str, dev: &str, stat: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{dev}/statistics/{stat}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
