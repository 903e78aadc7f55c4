//! In-process clusters: several nodes in one test runtime, each with its own data dir,
//! talking over real QUIC and HTTP on loopback.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use node::config::Config;
use node::server::Node;
use tempfile::TempDir;

use crate::http::{self, wait_for};

pub struct InprocCluster {
    pub nodes: Vec<Option<Node>>,
    pub configs: Vec<Config>,
    pub bases: Vec<String>,
    _dirs: Vec<TempDir>,
}

/// A node's config: the defaults, with a data dir, free addresses on `ip` (the gossip port
/// is the cluster port + 1, the default) and, for a joining node, the address to join and
/// the token.
pub fn config(data_dir: &Path, ip: &str, join: Option<(String, String)>) -> Config {
    let mut c = Config::default();
    c.storage.data_dir = Some(data_dir.to_path_buf());
    // Tests of access control turn it back on.
    c.api.insecure_no_auth = true;
    c.api.addr = crate::free_addrs(ip).0;
    c.cluster.addr = crate::free_cluster_addr(ip);
    if let Some((addr, token)) = join {
        c.cluster.join = Some(addr);
        c.cluster.token = Some(token);
    }
    c
}

/// Starts a new node on `ip` that joins through `join` with `token`, which must be refused;
/// answers the error's text (with its causes). `must_not` says why it must not join.
pub async fn refused_join(ip: &str, join: &str, token: &str, must_not: &str) -> String {
    let d = TempDir::new().expect("temp dir");
    let err = Node::start(config(
        d.path(),
        ip,
        Some((join.to_string(), token.to_string())),
    ))
    .await
    .err()
    .unwrap_or_else(|| panic!("{must_not}"));
    format!("{err:#}")
}

impl InprocCluster {
    /// Starts node 1, joins the others through it, and waits until the voters are in place.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(n, |_| {}).await
    }

    /// Like [`start`](Self::start), with `tune` applied to every node's config.
    pub async fn start_with(n: usize, tune: impl Fn(&mut Config)) -> Result<Self> {
        crate::init_logging();
        node::install_crypto_provider();
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        let mut configs = Vec::new();
        let d1 = TempDir::new()?;
        let mut c1 = config(d1.path(), "127.0.0.1", None);
        tune(&mut c1);
        nodes.push(Some(Node::start(c1.clone()).await?));
        let token = std::fs::read_to_string(d1.path().join("join-token"))
            .context("join-token")?
            .trim()
            .to_string();
        let join_addr = c1.advertise_cluster_addr();
        configs.push(c1);
        dirs.push(d1);
        for i in 1..n {
            let d = TempDir::new()?;
            let ip = format!("127.0.0.{}", i + 1);
            let mut c = config(d.path(), &ip, Some((join_addr.clone(), token.clone())));
            tune(&mut c);
            nodes.push(Some(Node::start(c.clone()).await?));
            configs.push(c);
            dirs.push(d);
        }
        let bases = configs
            .iter()
            .map(|c| format!("http://{}", c.advertise_api_addr()))
            .collect();
        let cluster = Self {
            nodes,
            configs,
            bases,
            _dirs: dirs,
        };
        cluster.wait_voters(n.min(3)).await?;
        Ok(cluster)
    }

    /// Starts one more node that joins through node 1 with the same settings.
    pub async fn join_node(&mut self) -> Result<usize> {
        let token = std::fs::read_to_string(self.configs[0].data_dir().join("join-token"))?
            .trim()
            .to_string();
        let d = TempDir::new()?;
        let i = self.nodes.len();
        let ip = format!("127.0.0.{}", i + 1);
        let mut c = config(
            d.path(),
            &ip,
            Some((self.configs[0].advertise_cluster_addr(), token)),
        );
        c.raft.snapshot_every_entries = self.configs[0].raft.snapshot_every_entries;
        c.raft.snapshot_every_log_bytes = self.configs[0].raft.snapshot_every_log_bytes;
        self.nodes.push(Some(Node::start(c.clone()).await?));
        self.bases
            .push(format!("http://{}", c.advertise_api_addr()));
        self.configs.push(c);
        self._dirs.push(d);
        Ok(i)
    }

    /// Waits until every running node reports `voters` voters and the same leader.
    pub async fn wait_voters(&self, voters: usize) -> Result<()> {
        let admin = self.admin_token();
        let apis: Vec<_> = self
            .bases
            .iter()
            .map(|b| match &admin {
                Some(t) => http::api(b).with_token(t.clone()),
                None => http::api(b),
            })
            .collect();
        wait_for(
            &format!("{voters} voters and one leader on every node"),
            Duration::from_secs(30),
            || async {
                let mut leader = None;
                for (i, api) in apis.iter().enumerate() {
                    if self.nodes[i].is_none() {
                        continue;
                    }
                    let s = http::status(api).await?;
                    if http::voter_count(&s) != voters || s.leader_id.is_none() {
                        return None;
                    }
                    if leader.is_some() && leader != s.leader_id {
                        return None;
                    }
                    leader = s.leader_id;
                }
                Some(())
            },
        )
        .await
    }

    /// The founding node's management token, when access control is on.
    pub fn admin_token(&self) -> Option<String> {
        if self.configs[0].api.insecure_no_auth {
            return None;
        }
        let path = self.configs[0]
            .data_dir()
            .join(node::server::BOOTSTRAP_TOKEN_FILE);
        std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// The index (0-based) of the current leader, as node `from` sees it.
    pub fn leader_index(&self) -> Option<usize> {
        for n in self.nodes.iter().flatten() {
            if let Some(l) = n.cluster.raft_view().leader {
                return Some(l as usize - 1);
            }
        }
        None
    }

    /// Stops node `i` (graceful).
    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    /// Restarts node `i` from its data dir, once its stopped incarnation has let go of its
    /// cluster and gossip ports (a task of the old node may hold its QUIC socket a moment
    /// after `shutdown` returns).
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let mut c = self.configs[i].clone();
        c.cluster.join = None;
        c.cluster.token = None;
        let (quic, gossip) = (c.cluster.addr, c.gossip_addr());
        wait_for(
            &format!("node {}'s ports to be free", i + 1),
            Duration::from_secs(10),
            || async {
                (std::net::UdpSocket::bind(quic).is_ok()
                    && std::net::UdpSocket::bind(gossip).is_ok())
                .then_some(())
            },
        )
        .await?;
        self.nodes[i] = Some(Node::start(c).await?);
        Ok(())
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
