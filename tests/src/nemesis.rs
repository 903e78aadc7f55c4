//! Network partitions on loopback addresses with `iptables` (needs root).
//!
//! Every rule drops UDP (the QUIC cluster traffic) from one node address to another in the
//! `INPUT` chain and carries a comment unique to this [`Partitions`] value, so healing removes
//! exactly its rules and nothing else. HTTP (TCP) from clients still reaches every node: a
//! client talking to a node on the minority side sees 503/504, not success. Rules are removed
//! by [`Partitions::heal`] and again on drop, also while a failed test unwinds; rules left by
//! a process that died without unwinding are removed by the next run (`clean_stale`).

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

const TAG_PREFIX: &str = "stackd-nemesis-";

pub struct Partitions {
    tag: String,
}

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the `INPUT` rules whose comment satisfies `pred`. With `lenient`, a rule that
/// cannot be deleted (another run removed it first) is skipped.
fn remove_rules(pred: impl Fn(&str) -> bool, lenient: bool) -> Result<usize> {
    let listing = iptables(&["-S", "INPUT"])?;
    let mut removed = 0;
    for line in listing.lines() {
        let Some(spec) = line.strip_prefix("-A INPUT ") else {
            continue;
        };
        let Some(tag) = spec
            .split_whitespace()
            .skip_while(|w| *w != "--comment")
            .nth(1)
        else {
            continue;
        };
        if !pred(tag.trim_matches('"')) {
            continue;
        }
        let mut args = vec!["-D", "INPUT"];
        args.extend(spec.split_whitespace().map(|w| w.trim_matches('"')));
        match iptables(&args) {
            Ok(_) => removed += 1,
            Err(_) if lenient => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

impl Partitions {
    /// Checks that iptables works and removes rules left behind by dead runs.
    pub fn new() -> Result<Self> {
        iptables(&["-S", "INPUT"]).context(
            "network partitions need iptables and root (the fault-injection runs use them)",
        )?;
        clean_stale()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Self {
            tag: format!("{TAG_PREFIX}{}-{nanos}", std::process::id()),
        })
    }

    /// Drops cluster traffic between every pair of addresses in different `groups`.
    pub fn split(&self, groups: &[Vec<String>]) -> Result<()> {
        let mut cuts = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi != hi {
                    for a in g {
                        for b in h {
                            cuts.push((a.clone(), b.clone()));
                        }
                    }
                }
            }
        }
        self.cut(&cuts)
    }

    /// Drops cluster traffic from `a` to `b` for each pair (one direction each).
    pub fn cut(&self, pairs: &[(String, String)]) -> Result<()> {
        for (a, b) in pairs {
            iptables(&[
                "-I",
                "INPUT",
                "-s",
                a,
                "-d",
                b,
                "-p",
                "udp",
                "-m",
                "comment",
                "--comment",
                &self.tag,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// The comment on this value's rules.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Removes every rule of this value.
    pub fn heal(&self) -> Result<usize> {
        remove_rules(|t| t == self.tag, false)
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("removing iptables rules {}: {e:#}", self.tag);
        }
    }
}

/// Removes rules whose creating process no longer exists.
fn clean_stale() -> Result<()> {
    remove_rules(
        |t| {
            let Some(rest) = t.strip_prefix(TAG_PREFIX) else {
                return false;
            };
            let pid = rest.split('-').next().unwrap_or("");
            !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        },
        true,
    )?;
    Ok(())
}
