//! The service registry and the gateway's routes.
//!
//! # Model
//! A service is a name with instances; an instance (`service`, `id`) is an address and port
//! with tags, metadata, a weight and at most one health check. Its status is `passing` or
//! `critical`, and it changes only through the log:
//! - a TTL check passes on each [`ServiceCmd::Heartbeat`] and turns critical when no
//!   heartbeat came within its TTL (a deadline on the replicated clock);
//! - an HTTP or TCP check is run by one node of the cluster, which proposes
//!   [`ServiceCmd::SetStatus`] only when the status it observes differs from the replicated
//!   one, so a stable registry writes nothing;
//! - an instance without a check is passing while it is registered.
//!
//! An instance that stays critical for its `deregister_critical_after_ms` (0: never) is
//! removed on the replicated clock. A deregistration with a drain keeps the instance, marked
//! draining (the gateway sends it no new request), until the drain ends.
//!
//! # Revisions
//! Every change to a service (an instance registered, changed, removed, or its status or
//! drain changed) takes the registry's next revision, and the service's revision becomes
//! that. A watcher that knows revision R of a service has missed something exactly when the
//! service's revision is greater than R. A service whose last instance goes away is forgotten;
//! its revision is then the registry's `emptied` revision (the last time any service went
//! empty), which is never below the revision the service last had.
//!
//! # Routes
//! A route tells the gateway of every node which requests (host, path prefix) go to which
//! service, and how (balancing strategy, timeouts, retries, body limit). Routes are replicated
//! state, so a change applies on every node at once.
//!
//! # Bounds
//! [`MAX_INSTANCES`] instances and [`MAX_ROUTES`] routes in all; one more is refused with
//! [`ServiceResult::Limited`]. Sizes of fields are checked by the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use storage::Db;

use super::primitive::{records, Cx, Deadlines, Part, Primitive};
use super::{prefixed, LiveEvent};
use crate::codec;

/// `svi:<service>/<id>` → [`Instance`].
const INSTANCE_PREFIX: &[u8] = b"svi:";
/// `svr:<service>` → the service's revision.
const SERVICE_PREFIX: &[u8] = b"svr:";
/// `rt:<name>` → [`Route`].
const ROUTE_PREFIX: &[u8] = b"rt:";
/// `m:services` → [`RegistryMeta`].
const META_KEY: &[u8] = b"m:services";

/// The output of an instance whose http or tcp check has not run yet (it starts critical).
pub const NOT_CHECKED: &str = "not checked yet";

/// Most instances registered at once, over every service.
pub const MAX_INSTANCES: usize = 10_000;
/// Most gateway routes.
pub const MAX_ROUTES: usize = 1_000;

/// A health check, run by the cluster (HTTP, TCP) or fed by the instance (TTL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// `GET http://<address>:<port><path>`; passes on `expect_status` (or any 2xx when 0).
    Http {
        path: String,
        expect_status: u16,
        interval_ms: u64,
        timeout_ms: u64,
        damping: Damping,
    },
    /// A TCP connect to `<address>:<port>`.
    Tcp {
        interval_ms: u64,
        timeout_ms: u64,
        damping: Damping,
    },
    /// Passes on each heartbeat; critical when none came within `ttl_ms`.
    Ttl { ttl_ms: u64 },
}

/// Flap damping of a check run by the cluster: how many results in a row change the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damping {
    /// Consecutive failures that turn a passing instance critical.
    pub failures_before_critical: u32,
    /// Consecutive successes that turn a critical instance passing.
    pub successes_before_passing: u32,
}

impl Check {
    /// Whether a node of the cluster runs this check (else the instance feeds it).
    pub fn is_run_by_cluster(&self) -> bool {
        !matches!(self, Check::Ttl { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Passing,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Critical => "critical",
        }
    }
}

/// What a registration says about an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// Relative share of requests under the weighted strategy (at least 1).
    pub weight: u32,
    pub check: Option<Check>,
    /// How long the instance may stay critical before it is removed (0: never).
    pub deregister_critical_after_ms: u64,
}

/// A registered instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub spec: InstanceSpec,
    pub status: Health,
    /// When `status` last changed (replicated clock).
    pub status_since_ms: u64,
    /// Why the status is what it is (the check's last output).
    pub output: String,
    /// TTL checks: when the instance turns critical unless it heartbeats.
    pub ttl_expires_at_ms: Option<u64>,
    /// While draining: when the instance is removed. It gets no new requests meanwhile.
    pub draining_until_ms: Option<u64>,
    pub registered_at_ms: u64,
    /// The registry revision of the instance's last change.
    pub revision: u64,
}

impl Instance {
    /// Whether the gateway may send it new requests.
    pub fn routable(&self) -> bool {
        self.status == Health::Passing && self.draining_until_ms.is_none()
    }

    /// Its next deadline on the replicated clock: drain end, TTL end, or removal while
    /// critical.
    fn deadline(&self) -> Option<u64> {
        let status_deadline = match self.status {
            Health::Passing => self.ttl_expires_at_ms,
            Health::Critical => (self.spec.deregister_critical_after_ms > 0).then(|| {
                self.status_since_ms
                    .saturating_add(self.spec.deregister_critical_after_ms)
            }),
        };
        [self.draining_until_ms, status_deadline]
            .into_iter()
            .flatten()
            .min()
    }
}

/// How a route balances requests over its service's instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    RoundRobin,
    /// At random, in proportion to the instances' weights.
    Weighted,
    /// The instance with the fewest requests in flight (from this node).
    LeastRequest,
    /// Power of two choices on peak-EWMA latency times requests in flight.
    PeakEwma,
    /// Consistent (rendezvous) hashing on a header or cookie: sticky while healthy.
    Hash,
}

/// What a [`Strategy::Hash`] route hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashOn {
    Header(String),
    Cookie(String),
}

/// A gateway route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Matches the request's host (without port); `None`: any host.
    pub host: Option<String>,
    /// Matches paths that start with it; the longest matching prefix wins.
    pub path_prefix: String,
    pub service: String,
    pub strategy: Strategy,
    pub hash_on: Option<HashOn>,
    pub connect_timeout_ms: u64,
    /// Until the instance's response headers arrive.
    pub request_timeout_ms: u64,
    /// Other instances tried when connecting fails (idempotent methods only).
    pub retries: u32,
    pub max_body_bytes: u64,
    /// Removes `path_prefix` from the path sent to the instance.
    pub strip_prefix: bool,
}

/// A registry or route command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceCmd {
    /// Registers an instance, or replaces its registration (its status is kept when the check
    /// is the same).
    Register(InstanceSpec),
    /// Deregisters an instance: at once, or after `drain_ms` during which it gets no new
    /// requests.
    Deregister {
        service: String,
        id: String,
        drain_ms: u64,
    },
    /// A TTL check's heartbeat: passing for another TTL.
    Heartbeat {
        service: String,
        id: String,
    },
    /// A status observed by the node running the instance's check.
    SetStatus {
        service: String,
        id: String,
        status: Health,
        output: String,
    },
    PutRoute {
        name: String,
        route: Route,
    },
    DeleteRoute {
        name: String,
    },
}

/// The result of a [`ServiceCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceResult {
    /// The registry's revision after the change (unchanged when nothing changed).
    Done {
        revision: u64,
    },
    NotFound,
    /// The heartbeat of an instance without a TTL check.
    NotTtl,
    /// A bound of the registry was reached (its name, its value).
    Limited {
        limit: String,
        max: u64,
    },
}

/// The registry's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RegistryMeta {
    revision: u64,
    /// The revision at which a service last went empty.
    emptied: u64,
}

type InstanceKey = (String, String);

#[derive(Default, Debug)]
pub(super) struct Services {
    instances: BTreeMap<InstanceKey, Instance>,
    /// The revision of each service with instances.
    revisions: BTreeMap<String, u64>,
    routes: BTreeMap<String, Route>,
    meta: RegistryMeta,
    deadlines: Deadlines<InstanceKey>,
}

fn instance_key(service: &str, id: &str) -> Vec<u8> {
    prefixed(INSTANCE_PREFIX, &format!("{service}/{id}"))
}

impl Part for Services {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Services> {
        let mut s = Services::default();
        if let Some(bytes) = db.sm_get(META_KEY)? {
            s.meta = codec::decode(&bytes)?;
        }
        for (_, inst) in records::<Instance>(db, INSTANCE_PREFIX)? {
            let key = (inst.spec.service.clone(), inst.spec.id.clone());
            if let Some(at) = inst.deadline() {
                s.deadlines.insert(at, key.clone());
            }
            s.instances.insert(key, inst);
        }
        s.revisions = records::<u64>(db, SERVICE_PREFIX)?.into_iter().collect();
        s.routes = records::<Route>(db, ROUTE_PREFIX)?.into_iter().collect();
        Ok(s)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        while let Some(key) = self.deadlines.first_due(now) {
            let Some(mut inst) = self.instances.get(&key).cloned() else {
                // Not reachable: deadlines follow the instances. Drop it rather than spin.
                self.deadlines.pop_due(now);
                continue;
            };
            if inst.draining_until_ms.is_some_and(|t| t <= now) {
                self.remove(&key, cx);
                continue;
            }
            if inst.status == Health::Passing && inst.ttl_expires_at_ms.is_some_and(|t| t <= now) {
                inst.status = Health::Critical;
                inst.status_since_ms = now;
                inst.output = "TTL expired: no heartbeat".into();
                inst.ttl_expires_at_ms = None;
                self.store(inst, cx);
                continue;
            }
            if inst.status == Health::Critical && inst.deadline().is_some_and(|t| t <= now) {
                // Critical past its deregistration time.
                self.remove(&key, cx);
            } else {
                // Not reachable: the deadline is the instance's own. Drop it rather than spin.
                self.deadlines.pop_due(now);
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }
}

impl Primitive for Services {
    type Cmd = ServiceCmd;
    type Output = ServiceResult;

    fn apply(&mut self, cmd: &ServiceCmd, cx: &mut Cx<'_>) -> ServiceResult {
        match cmd {
            ServiceCmd::Register(spec) => self.register(spec, cx),
            ServiceCmd::Deregister {
                service,
                id,
                drain_ms,
            } => self.deregister((service, id), *drain_ms, cx),
            ServiceCmd::Heartbeat { service, id } => self.heartbeat((service, id), cx),
            ServiceCmd::SetStatus {
                service,
                id,
                status,
                output,
            } => self.set_status((service, id), *status, output, cx),
            ServiceCmd::PutRoute { name, route } => self.put_route(name, route, cx),
            ServiceCmd::DeleteRoute { name } => {
                if self.routes.remove(name).is_none() {
                    return ServiceResult::NotFound;
                }
                cx.delete(prefixed(ROUTE_PREFIX, name));
                self.bump(cx);
                self.done()
            }
        }
    }
}

impl Services {
    /// Removes an instance now, or marks it draining for `drain_ms` first.
    fn deregister(
        &mut self,
        (service, id): (&String, &String),
        drain_ms: u64,
        cx: &mut Cx<'_>,
    ) -> ServiceResult {
        let key = (service.clone(), id.clone());
        let Some(inst) = self.instances.get(&key) else {
            return ServiceResult::NotFound;
        };
        if drain_ms == 0 {
            self.remove(&key, cx);
        } else {
            let mut inst = inst.clone();
            let until = cx.now().saturating_add(drain_ms);
            // A second deregistration does not lengthen a drain under way.
            inst.draining_until_ms = Some(inst.draining_until_ms.map_or(until, |u| u.min(until)));
            self.store(inst, cx);
        }
        self.done()
    }

    /// A `ttl` check's report: passing until its TTL passes again.
    fn heartbeat(&mut self, (service, id): (&String, &String), cx: &mut Cx<'_>) -> ServiceResult {
        let now = cx.now();
        let key = (service.clone(), id.clone());
        let Some(inst) = self.instances.get(&key) else {
            return ServiceResult::NotFound;
        };
        let Some(Check::Ttl { ttl_ms }) = inst.spec.check else {
            return ServiceResult::NotTtl;
        };
        let mut inst = inst.clone();
        inst.ttl_expires_at_ms = Some(now.saturating_add(ttl_ms));
        if inst.status != Health::Passing {
            inst.status = Health::Passing;
            inst.status_since_ms = now;
            inst.output = "heartbeat".into();
            self.store(inst, cx);
        } else {
            // Only the deadline moved: no new revision for watchers.
            self.store_quietly(inst, cx);
        }
        self.done()
    }

    /// The result of a check the cluster runs.
    fn set_status(
        &mut self,
        (service, id): (&String, &String),
        status: Health,
        output: &str,
        cx: &mut Cx<'_>,
    ) -> ServiceResult {
        let key = (service.clone(), id.clone());
        let Some(inst) = self.instances.get(&key) else {
            return ServiceResult::NotFound;
        };
        // The first result is written even when it keeps the status (critical), so the
        // output says why.
        if (inst.status != status || inst.output == NOT_CHECKED)
            && inst
                .spec
                .check
                .as_ref()
                .is_some_and(Check::is_run_by_cluster)
        {
            let mut inst = inst.clone();
            if inst.status != status {
                inst.status = status;
                inst.status_since_ms = cx.now();
            }
            inst.output = output.to_string();
            self.store(inst, cx);
        }
        self.done()
    }

    /// Creates or replaces a route, within [`MAX_ROUTES`].
    fn put_route(&mut self, name: &String, route: &Route, cx: &mut Cx<'_>) -> ServiceResult {
        if !self.routes.contains_key(name) && self.routes.len() >= MAX_ROUTES {
            return ServiceResult::Limited {
                limit: "routes".into(),
                max: MAX_ROUTES as u64,
            };
        }
        cx.put(prefixed(ROUTE_PREFIX, name), route);
        self.routes.insert(name.clone(), route.clone());
        self.bump(cx);
        self.done()
    }
    fn done(&self) -> ServiceResult {
        ServiceResult::Done {
            revision: self.meta.revision,
        }
    }

    fn bump(&mut self, cx: &mut Cx<'_>) -> u64 {
        self.meta.revision += 1;
        cx.put(META_KEY.to_vec(), &self.meta);
        self.meta.revision
    }

    fn register(&mut self, spec: &InstanceSpec, cx: &mut Cx<'_>) -> ServiceResult {
        let now = cx.now();
        let key = (spec.service.clone(), spec.id.clone());
        let old = self.instances.get(&key);
        if old.is_none() && self.instances.len() >= MAX_INSTANCES {
            return ServiceResult::Limited {
                limit: "instances".into(),
                max: MAX_INSTANCES as u64,
            };
        }
        let (status, since, output, ttl) = match old {
            // Same check: the instance keeps its status (and a TTL check its deadline).
            Some(o) if o.spec.check == spec.check => (
                o.status,
                o.status_since_ms,
                o.output.clone(),
                o.ttl_expires_at_ms,
            ),
            _ => match &spec.check {
                None => (Health::Passing, now, "no check".to_string(), None),
                // Registering is a sign of life: the first TTL starts now.
                Some(Check::Ttl { ttl_ms }) => (
                    Health::Passing,
                    now,
                    "registered".to_string(),
                    Some(now.saturating_add(*ttl_ms)),
                ),
                Some(_) => (Health::Critical, now, NOT_CHECKED.to_string(), None),
            },
        };
        let inst = Instance {
            spec: spec.clone(),
            status,
            status_since_ms: since,
            output,
            ttl_expires_at_ms: ttl,
            draining_until_ms: None,
            registered_at_ms: old.map_or(now, |o| o.registered_at_ms),
            revision: 0,
        };
        self.store(inst, cx);
        self.done()
    }

    /// Writes `inst` as a change of its service: a new revision.
    fn store(&mut self, mut inst: Instance, cx: &mut Cx<'_>) {
        let revision = self.bump(cx);
        inst.revision = revision;
        let service = inst.spec.service.clone();
        cx.put(prefixed(SERVICE_PREFIX, &service), &revision);
        self.revisions.insert(service.clone(), revision);
        cx.emit(|| LiveEvent::Service { service, revision });
        self.store_quietly(inst, cx);
    }

    /// Writes `inst` without a new revision (only its TTL deadline moved).
    fn store_quietly(&mut self, inst: Instance, cx: &mut Cx<'_>) {
        let key = (inst.spec.service.clone(), inst.spec.id.clone());
        if let Some(at) = self.instances.get(&key).and_then(Instance::deadline) {
            self.deadlines.remove(at, &key);
        }
        if let Some(at) = inst.deadline() {
            self.deadlines.insert(at, key.clone());
        }
        cx.put(instance_key(&key.0, &key.1), &inst);
        self.instances.insert(key, inst);
    }

    fn remove(&mut self, key: &InstanceKey, cx: &mut Cx<'_>) {
        let Some(old) = self.instances.remove(key) else {
            return;
        };
        if let Some(at) = old.deadline() {
            self.deadlines.remove(at, key);
        }
        cx.delete(instance_key(&key.0, &key.1));
        let revision = self.bump(cx);
        if self.instances_of(&key.0).next().is_none() {
            self.revisions.remove(&key.0);
            cx.delete(prefixed(SERVICE_PREFIX, &key.0));
            self.meta.emptied = revision;
            cx.put(META_KEY.to_vec(), &self.meta);
        } else {
            self.revisions.insert(key.0.clone(), revision);
            cx.put(prefixed(SERVICE_PREFIX, &key.0), &revision);
        }
        let service = key.0.clone();
        cx.emit(|| LiveEvent::Service { service, revision });
    }

    pub fn instances_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        let start = (service.to_string(), String::new());
        let service = service.to_string();
        self.instances
            .range(start..)
            .take_while(move |((s, _), _)| *s == service)
            .map(|(_, i)| i)
    }

    /// A service's revision: that of its last change, or the registry's `emptied` revision
    /// when it has no instances.
    pub fn revision_of(&self, service: &str) -> u64 {
        self.revisions
            .get(service)
            .copied()
            .unwrap_or(self.meta.emptied)
    }

    pub fn revision(&self) -> u64 {
        self.meta.revision
    }

    /// Each service with instances, with its revision.
    pub fn services(&self) -> &BTreeMap<String, u64> {
        &self.revisions
    }

    pub fn all_instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    pub fn instance(&self, service: &str, id: &str) -> Option<&Instance> {
        self.instances.get(&(service.to_string(), id.to_string()))
    }

    pub fn routes(&self) -> &BTreeMap<String, Route> {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Meta;
    use storage::SmBatch;

    fn spec(id: &str, check: Option<Check>) -> InstanceSpec {
        InstanceSpec {
            service: "web".into(),
            id: id.into(),
            address: "127.0.0.1".into(),
            port: 8080,
            tags: vec![],
            meta: BTreeMap::new(),
            weight: 1,
            check,
            deregister_critical_after_ms: 10_000,
        }
    }

    struct Fixture {
        s: Services,
        meta: Meta,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                s: Services::default(),
                meta: Meta::default(),
            }
        }

        fn at(&mut self, now: u64, cmd: ServiceCmd) -> ServiceResult {
            self.meta.now_ms = now;
            let mut batch = SmBatch::default();
            let mut live = None;
            let mut cx = Cx::new(&mut self.meta, &mut batch, &mut live);
            self.s.expire(&mut cx);
            self.s.apply(&cmd, &mut cx)
        }

        fn tick(&mut self, now: u64) {
            self.meta.now_ms = now;
            let mut batch = SmBatch::default();
            let mut live = None;
            let mut cx = Cx::new(&mut self.meta, &mut batch, &mut live);
            self.s.expire(&mut cx);
        }

        fn status(&self, id: &str) -> Option<Health> {
            self.s.instance("web", id).map(|i| i.status)
        }
    }

    #[test]
    fn a_ttl_instance_turns_critical_without_heartbeats_then_goes_away() {
        let mut f = Fixture::new();
        f.at(
            1_000,
            ServiceCmd::Register(spec("a", Some(Check::Ttl { ttl_ms: 500 }))),
        );
        assert_eq!(f.status("a"), Some(Health::Passing));
        f.at(
            1_400,
            ServiceCmd::Heartbeat {
                service: "web".into(),
                id: "a".into(),
            },
        );
        f.tick(1_899);
        assert_eq!(f.status("a"), Some(Health::Passing));
        f.tick(1_900);
        assert_eq!(f.status("a"), Some(Health::Critical));
        assert_eq!(f.s.next_deadline(), Some(11_900));
        f.tick(11_900);
        assert_eq!(f.status("a"), None);
        assert_eq!(f.s.next_deadline(), None);
        // The service is forgotten, and its revision did not go backwards.
        assert!(f.s.services().is_empty());
        assert!(f.s.revision_of("web") >= 3);
    }

    #[test]
    fn status_changes_take_a_revision_and_repeats_change_nothing() {
        let mut f = Fixture::new();
        let http = Check::Http {
            path: "/health".into(),
            expect_status: 0,
            interval_ms: 1_000,
            timeout_ms: 500,
            damping: Damping {
                failures_before_critical: 1,
                successes_before_passing: 1,
            },
        };
        f.at(1, ServiceCmd::Register(spec("a", Some(http.clone()))));
        assert_eq!(f.status("a"), Some(Health::Critical));
        let set = |status| ServiceCmd::SetStatus {
            service: "web".into(),
            id: "a".into(),
            status,
            output: String::new(),
        };
        let r1 = f.s.revision_of("web");
        f.at(2, set(Health::Passing));
        let r2 = f.s.revision_of("web");
        assert!(r2 > r1);
        f.at(3, set(Health::Passing));
        assert_eq!(f.s.revision_of("web"), r2);
        // Re-registering with the same check keeps the status.
        f.at(4, ServiceCmd::Register(spec("a", Some(http))));
        assert_eq!(f.status("a"), Some(Health::Passing));
        // A status for an instance without a cluster-run check is ignored.
        f.at(5, ServiceCmd::Register(spec("b", None)));
        f.at(
            6,
            ServiceCmd::SetStatus {
                service: "web".into(),
                id: "b".into(),
                status: Health::Critical,
                output: String::new(),
            },
        );
        assert_eq!(f.status("b"), Some(Health::Passing));
    }

    #[test]
    fn a_drained_instance_is_unroutable_then_removed() {
        let mut f = Fixture::new();
        f.at(1, ServiceCmd::Register(spec("a", None)));
        f.at(
            10,
            ServiceCmd::Deregister {
                service: "web".into(),
                id: "a".into(),
                drain_ms: 100,
            },
        );
        assert!(!f.s.instance("web", "a").unwrap().routable());
        f.tick(109);
        assert!(f.s.instance("web", "a").is_some());
        f.tick(110);
        assert!(f.s.instance("web", "a").is_none());
        assert_eq!(
            f.at(
                111,
                ServiceCmd::Deregister {
                    service: "web".into(),
                    id: "a".into(),
                    drain_ms: 0,
                },
            ),
            ServiceResult::NotFound
        );
    }

    #[test]
    fn heartbeats_need_a_ttl_check() {
        let mut f = Fixture::new();
        f.at(1, ServiceCmd::Register(spec("a", None)));
        assert_eq!(
            f.at(
                2,
                ServiceCmd::Heartbeat {
                    service: "web".into(),
                    id: "a".into(),
                },
            ),
            ServiceResult::NotTtl
        );
    }
}
