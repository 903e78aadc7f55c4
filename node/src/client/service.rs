//! `stackd service …` (the registry) and `stackd route …` (the gateway's routes).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};

use super::Target;
use crate::api::services::{CheckBody, HashOnBody, RegisterRequest, RouteBody};

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Register an instance of SERVICE (or replace its registration).
    Register(Register),
    /// Deregister an instance, at once or after --drain-ms without new requests.
    Deregister {
        service: String,
        id: String,
        #[arg(long)]
        drain_ms: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Pass an instance's ttl check for another ttl.
    Heartbeat {
        service: String,
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Every service with instances, with how many are healthy.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// A service's instances with their status.
    Get {
        service: String,
        /// Only the instances that take requests.
        #[arg(long)]
        healthy: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// `stackd service register`'s arguments.
#[derive(Args, Debug)]
pub struct Register {
    pub service: String,
    pub id: String,
    /// Host name or IP address the gateway and checks connect to.
    #[arg(long)]
    pub address: String,
    #[arg(long)]
    pub port: u16,
    /// A tag (repeat for more).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Metadata KEY=VALUE (repeat for more).
    #[arg(long = "meta", value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// Relative share of requests under the weighted strategy (1..=1000).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Health check: `http` (GET --check-path), `tcp` (connect) or `ttl` (heartbeats
    /// within --ttl-ms). Without one the instance is passing while registered.
    #[arg(long, value_parser = ["http", "tcp", "ttl"])]
    pub check: Option<String>,
    /// http checks: the path to GET (default /).
    #[arg(long)]
    pub check_path: Option<String>,
    /// http checks: the status that passes (default: any 2xx).
    #[arg(long)]
    pub expect_status: Option<u16>,
    /// http and tcp checks: how often (default 10000).
    #[arg(long)]
    pub interval_ms: Option<u64>,
    /// http and tcp checks: how long one may take (default 2000, at most the interval).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// ttl checks: critical when no heartbeat came within this long.
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Remove the instance after it stayed critical this long (0: never; default 3600000).
    #[arg(long)]
    pub deregister_critical_after_ms: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Create or replace a gateway route; every node's gateway applies it at once.
    Put(Box<RoutePut>),
    /// Every route.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// One route, as JSON.
    Get {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `stackd route put`.
#[derive(clap::Args, Debug)]
pub struct RoutePut {
    name: String,
    /// The service whose healthy instances serve the route.
    #[arg(long)]
    service: String,
    /// Match only this host (without port).
    #[arg(long)]
    host: Option<String>,
    /// Match paths starting with this (default /); the longest match wins.
    #[arg(long)]
    path_prefix: Option<String>,
    /// round_robin, weighted, least_request, peak_ewma (default) or hash.
    #[arg(long)]
    strategy: Option<String>,
    /// hash routes: the header whose value picks the instance.
    #[arg(long, conflicts_with = "hash_cookie")]
    hash_header: Option<String>,
    /// hash routes: the cookie whose value picks the instance.
    #[arg(long)]
    hash_cookie: Option<String>,
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Other instances tried when connecting fails (idempotent methods).
    #[arg(long)]
    retries: Option<u32>,
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Remove the path prefix from the path sent on.
    #[arg(long)]
    strip_prefix: bool,
    #[command(flatten)]
    target: Target,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub async fn run(cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Register(r) => register(r).await?,
        ServiceCmd::Deregister {
            service,
            id,
            drain_ms,
            target,
        } => {
            target
                .client()?
                .service_deregister(&service, &id, drain_ms)
                .await?;
            match drain_ms {
                Some(ms) if ms > 0 => outln!("{service}/{id} draining, removed in {ms} ms"),
                _ => outln!("deregistered {service}/{id}"),
            }
        }
        ServiceCmd::Heartbeat {
            service,
            id,
            target,
        } => {
            target.client()?.service_heartbeat(&service, &id).await?;
            outln!("{service}/{id} passing");
        }
        ServiceCmd::List { target } => {
            for s in target.client()?.services().await?.services {
                outln!("{}  {}/{} healthy", s.name, s.healthy, s.instances);
            }
        }
        ServiceCmd::Get {
            service,
            healthy,
            target,
        } => {
            let v = target.client()?.service(&service, healthy).await?;
            for i in v.instances {
                let drain = if i.draining_until_ms.is_some() {
                    "  draining"
                } else {
                    ""
                };
                outln!(
                    "{}  {}:{}  {}{drain}  {}",
                    i.id,
                    i.address,
                    i.port,
                    i.status,
                    i.output
                );
            }
        }
    }
    Ok(())
}

/// `stackd service register`.
async fn register(r: Register) -> anyhow::Result<()> {
    let Register {
        service,
        id,
        address,
        port,
        tags,
        meta,
        weight,
        check,
        check_path,
        expect_status,
        interval_ms,
        timeout_ms,
        ttl_ms,
        deregister_critical_after_ms,
        target,
    } = r;
    let check = check.map(|kind| CheckBody {
        kind,
        path: check_path,
        expect_status,
        interval_ms,
        timeout_ms,
        ttl_ms,
        ..CheckBody::default()
    });
    let req = RegisterRequest {
        address,
        port,
        tags,
        meta: meta.into_iter().collect::<BTreeMap<_, _>>(),
        weight,
        check,
        deregister_critical_after_ms,
    };
    let r = target
        .client()?
        .service_register(&service, &id, &req)
        .await?;
    outln!(
        "registered {service}/{id} (registry revision {})",
        r.revision
    );

    Ok(())
}

pub async fn run_route(cmd: RouteCmd) -> anyhow::Result<()> {
    match cmd {
        RouteCmd::Put(put) => {
            let RoutePut {
                name,
                service,
                host,
                path_prefix,
                strategy,
                hash_header,
                hash_cookie,
                connect_timeout_ms,
                request_timeout_ms,
                retries,
                max_body_bytes,
                strip_prefix,
                target,
            } = *put;
            let hash_on = (hash_header.is_some() || hash_cookie.is_some()).then_some(HashOnBody {
                header: hash_header,
                cookie: hash_cookie,
            });
            let route = RouteBody {
                service,
                host,
                path_prefix,
                strategy,
                hash_on,
                connect_timeout_ms,
                request_timeout_ms,
                retries,
                max_body_bytes,
                strip_prefix: Some(strip_prefix),
            };
            target.client()?.route_put(&name, &route).await?;
            outln!("route {name} stored");
        }
        RouteCmd::List { target } => {
            for r in target.client()?.routes().await?.routes {
                let route = r.route;
                outln!(
                    "{}  {}{}  -> {}  {}",
                    r.name,
                    route.host.unwrap_or_else(|| "*".into()),
                    route.path_prefix.unwrap_or_default(),
                    route.service,
                    route.strategy.unwrap_or_default()
                );
            }
        }
        RouteCmd::Get { name, target } => {
            let r = target.client()?.route(&name).await?;
            outln!("{}", serde_json::to_string_pretty(&r)?);
        }
        RouteCmd::Delete { name, target } => {
            target.client()?.route_delete(&name).await?;
            outln!("route {name} deleted");
        }
    }
    Ok(())
}
