//! A test Kubernetes API server: plain HTTP on loopback, speaking the wire protocol of
//! the real one for what Portico's controller uses, so that kube-rs runs against it
//! unchanged. No kube-apiserver can be installed on these machines; this is the one
//! stand-in the e2e suite accepts.
//!
//! It is one file of about 1 200 lines because it is one server whose handlers share the
//! object store, its history and its watchers; split it along those if it grows.
//!
//! What it does as the real one does:
//! * list with `resourceVersion` in the list metadata, `limit` and `continue`
//!   (an expired continue token answers `410 Gone`, reason `Expired`);
//! * watch as a chunked stream of JSON lines `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/
//!   `ERROR`, from a `resourceVersion` (events since then are replayed from history),
//!   honouring `timeoutSeconds` and `allowWatchBookmarks`; a watch from a compacted
//!   `resourceVersion` gets an `ERROR` event with a `410 Expired` Status, as a real
//!   server sends it;
//! * create (409 `AlreadyExists`), get, replace (409 `Conflict` on a stale
//!   `resourceVersion`), merge patch, delete; the `status` subresource of Ingresses and
//!   Services; a write that changes nothing keeps the `resourceVersion` and sends no event;
//! * `fieldSelector` on `metadata.name`/`metadata.namespace` and equality `labelSelector`s.
//!
//! Where it simplifies:
//! * pages after the first list the current objects after the continue key, not the
//!   objects as of the first page's resourceVersion (the watch that follows replays
//!   everything since that version, so a watcher still converges);
//! * apply patches (`application/apply-patch+yaml`) and strategic merge patches are
//!   applied as JSON merge patches, without field ownership; JSON patches are refused (415);
//! * no authentication, admission, defaulting, validation or garbage collection;
//!   namespaces need not exist.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// One kind the server knows: where it lives in the URL space and what it is called.
#[derive(Debug)]
struct Kind {
    prefix: &'static str,
    plural: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
    /// Whether `status` is a subresource: the main resource's writes keep the stored
    /// status, and `/status` writes change nothing else.
    has_status: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        prefix: "api/v1",
        plural: "services",
        kind: "Service",
        api_version: "v1",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "api/v1",
        plural: "secrets",
        kind: "Secret",
        api_version: "v1",
        namespaced: true,
        has_status: false,
    },
    Kind {
        prefix: "api/v1",
        plural: "configmaps",
        kind: "ConfigMap",
        api_version: "v1",
        namespaced: true,
        has_status: false,
    },
    Kind {
        prefix: "api/v1",
        plural: "events",
        kind: "Event",
        api_version: "v1",
        namespaced: true,
        has_status: false,
    },
    Kind {
        prefix: "apis/networking.k8s.io/v1",
        plural: "ingresses",
        kind: "Ingress",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/networking.k8s.io/v1",
        plural: "ingressclasses",
        kind: "IngressClass",
        api_version: "networking.k8s.io/v1",
        namespaced: false,
        has_status: false,
    },
    Kind {
        prefix: "apis/discovery.k8s.io/v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        namespaced: true,
        has_status: false,
    },
    Kind {
        prefix: "apis/coordination.k8s.io/v1",
        plural: "leases",
        kind: "Lease",
        api_version: "coordination.k8s.io/v1",
        namespaced: true,
        has_status: false,
    },
    Kind {
        prefix: "apis/events.k8s.io/v1",
        plural: "events",
        kind: "Event",
        api_version: "events.k8s.io/v1",
        namespaced: true,
        has_status: false,
    },
    Kind {
        prefix: "api/v1",
        plural: "namespaces",
        kind: "Namespace",
        api_version: "v1",
        namespaced: false,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        api_version: "gateway.networking.k8s.io/v1",
        namespaced: false,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1",
        plural: "gateways",
        kind: "Gateway",
        api_version: "gateway.networking.k8s.io/v1",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        api_version: "gateway.networking.k8s.io/v1",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        api_version: "gateway.networking.k8s.io/v1",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1alpha2",
        plural: "tcproutes",
        kind: "TCPRoute",
        api_version: "gateway.networking.k8s.io/v1alpha2",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1alpha2",
        plural: "udproutes",
        kind: "UDPRoute",
        api_version: "gateway.networking.k8s.io/v1alpha2",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1alpha2",
        plural: "tlsroutes",
        kind: "TLSRoute",
        api_version: "gateway.networking.k8s.io/v1alpha2",
        namespaced: true,
        has_status: true,
    },
    Kind {
        prefix: "apis/gateway.networking.k8s.io/v1beta1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        api_version: "gateway.networking.k8s.io/v1beta1",
        namespaced: true,
        has_status: false,
    },
];

fn kind_index(api_version: &str, kind: &str) -> Option<usize> {
    KINDS
        .iter()
        .position(|k| k.api_version == api_version && k.kind == kind)
}

type Key = (usize, String, String);

/// One change, as watches deliver it.
#[derive(Debug)]
struct Change {
    rv: u64,
    kind: usize,
    event: &'static str,
    object: Value,
}

/// How many changes are kept for watches to resume from.
const HISTORY: usize = 10_000;

struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// A watch may resume from this resourceVersion or a later one; older ones are expired.
    oldest: u64,
    uid: u64,
    changes: broadcast::Sender<Arc<Change>>,
    /// Every write request as `METHOD path`, for tests to count.
    writes: Vec<String>,
}

impl Store {
    fn record(&mut self, kind: usize, event: &'static str, object: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            event,
            object,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            let dropped = self.history.pop_front().expect("non-empty");
            self.oldest = dropped.rv;
        }
        let _ = self.changes.send(change);
    }

    /// Stores `object` under a new resourceVersion and tells watchers; `None` when it
    /// is identical to what is stored (no new version, no event, as the real server).
    fn put(&mut self, key: Key, mut object: Value) -> Value {
        if KINDS[key.0].kind == "Secret" {
            fold_string_data(&mut object);
        }
        let event = match self.objects.get(&key) {
            Some(old) if without_rv(old) == without_rv(&object) => return old.clone(),
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.record(key.0, event, object.clone());
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(key.0, "DELETED", object.clone());
        Some(object)
    }

    /// Fills in what the server owns on a new object: uid, creation time, generation.
    fn stamp_new(&mut self, object: &mut Value, kind: usize, namespace: &str) {
        let k = &KINDS[kind];
        object["apiVersion"] = json!(k.api_version);
        object["kind"] = json!(k.kind);
        let meta = &mut object["metadata"];
        if k.namespaced {
            meta["namespace"] = json!(namespace);
        }
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            if let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                meta["name"] = json!(format!("{prefix}{:05x}", fastrand::u32(..0xfffff)));
            }
        }
        self.uid += 1;
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("managedFields");
        }
    }
}

/// Moves a Secret's `stringData` into `data`, base64-encoded, as the API server does on write.
fn fold_string_data(secret: &mut Value) {
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (k, v) in strings {
        secret["data"][k] = json!(base64(v.as_str().unwrap_or("").as_bytes()));
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn without_rv(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("a time after 1970")
        .to_string()
}

/// A running test API server; stops when dropped.
pub struct TestApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    /// Bumped to end every open watch, as an API server restart would.
    cut: watch::Sender<u64>,
    forbidden: Arc<Mutex<Vec<&'static str>>>,
    /// Resources answered 404, as when their CRD is not installed.
    missing: Arc<Mutex<Vec<&'static str>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApiServer {
    pub async fn start() -> std::io::Result<TestApiServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(HISTORY);
        let store = Arc::new(Mutex::new(Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest: 1,
            uid: 0,
            changes,
            writes: Vec::new(),
        }));
        let (cut, _) = watch::channel(0);
        let forbidden = Arc::new(Mutex::new(Vec::new()));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let server = Server {
            store: store.clone(),
            cut: cut.subscribe(),
            forbidden: forbidden.clone(),
            missing: missing.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TestApiServer {
            addr,
            store,
            cut,
            forbidden,
            missing,
            task,
        })
    }

    /// A kubeconfig naming this server, for `--kubeconfig`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.addr
        )
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (as `kubectl apply` would, without field ownership):
    /// its kind comes from `apiVersion` and `kind`. Status is taken as given.
    pub fn apply(&self, object: &Value) -> Value {
        let kind = kind_index(
            object["apiVersion"].as_str().unwrap_or(""),
            object["kind"].as_str().unwrap_or(""),
        )
        .unwrap_or_else(|| {
            panic!(
                "the test API server does not serve {} {}",
                object["apiVersion"], object["kind"]
            )
        });
        let namespace = if KINDS[kind].namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
        } else {
            ""
        };
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let key = (kind, namespace.to_string(), name);
        let mut store = self.lock();
        let mut object = object.clone();
        match store.objects.get(&key) {
            Some(old) => {
                for field in ["uid", "creationTimestamp", "generation"] {
                    object["metadata"][field] = old["metadata"][field].clone();
                }
                // As the API server does: a changed spec is a new generation.
                if old.get("spec") != object.get("spec") {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(generation + 1);
                }
            }
            None => {
                let namespace = key.1.clone();
                store.stamp_new(&mut object, kind, &namespace);
            }
        }
        store.put(key, object)
    }

    pub fn apply_all(&self, objects: &[Value]) {
        for o in objects {
            self.apply(o);
        }
    }

    /// Deletes an object named like `object` (its apiVersion, kind, namespace and name).
    pub fn delete(&self, object: &Value) -> bool {
        let Some(kind) = kind_index(
            object["apiVersion"].as_str().unwrap_or(""),
            object["kind"].as_str().unwrap_or(""),
        ) else {
            return false;
        };
        let namespace = if KINDS[kind].namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
        } else {
            ""
        };
        let key = (
            kind,
            namespace.to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        self.lock().remove(&key).is_some()
    }

    /// The stored object of `api_version`/`kind` at `namespace`/`name`.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = kind_index(api_version, kind)?;
        let namespace = if KINDS[kind].namespaced {
            namespace
        } else {
            ""
        };
        self.lock()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every stored object of one kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(kind) = kind_index(api_version, kind) else {
            return Vec::new();
        };
        self.lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Answers every request for the resource `plural` (such as `secrets`) with 403
    /// Forbidden, as missing RBAC would, until [`TestApiServer::allow`].
    pub fn forbid(&self, plural: &'static str) {
        self.forbidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(plural);
    }

    /// Answers every request for the Gateway API kinds with 404, as an API server without
    /// their CRDs does.
    pub fn without_gateway_api(&self) {
        let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        for k in KINDS
            .iter()
            .filter(|k| group_of(k) == "gateway.networking.k8s.io")
        {
            missing.push(k.plural);
        }
    }

    /// Answers every request for the resource `plural` with 404, as without its CRD.
    pub fn without_kind(&self, plural: &'static str) {
        self.missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(plural);
    }

    pub fn allow(&self, plural: &str) {
        self.forbidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| *p != plural);
    }

    /// Every write request so far, as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.lock().writes.clone()
    }

    /// Compacts history, so that every resourceVersion handed out so far is expired, and
    /// ends every open watch: each watcher must resume, get `410 Expired`, and list again.
    pub fn expire_watches(&self) {
        {
            let mut store = self.lock();
            store.rv += 1;
            store.oldest = store.rv;
            store.history.clear();
        }
        self.cut.send_modify(|n| *n += 1);
    }
}

#[derive(Clone)]
struct Server {
    store: Arc<Mutex<Store>>,
    cut: watch::Receiver<u64>,
    forbidden: Arc<Mutex<Vec<&'static str>>>,
    missing: Arc<Mutex<Vec<&'static str>>>,
}

type Body = BoxBody<Bytes, Infallible>;

/// What a request addresses.
struct Target {
    kind: usize,
    /// Empty: all namespaces (or a cluster-scoped kind).
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn parse_target(path: &str) -> Option<Target> {
    let path = path.trim_start_matches('/');
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("api/v1/") {
        ("api/v1", rest)
    } else {
        let rest = path.strip_prefix("apis/")?;
        let mut parts = rest.splitn(3, '/');
        let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        let prefix_len = "apis/".len() + group.len() + 1 + version.len();
        (&path[..prefix_len], rest)
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, rest) = match segments.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        rest => (String::new(), rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(name.to_string()), false),
        [plural, name, "status"] => (*plural, Some(name.to_string()), true),
        _ => return None,
    };
    let kind = KINDS
        .iter()
        .position(|k| k.prefix == prefix && k.plural == plural)?;
    if status && !KINDS[kind].has_status {
        return None;
    }
    Some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

fn query_params(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            ) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `fieldSelector` or `labelSelector`, equality terms only.
struct Selector {
    fields: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn parse(params: &BTreeMap<String, String>) -> Result<Selector, String> {
        let terms = |text: Option<&String>| -> Result<Vec<(String, String)>, String> {
            let Some(text) = text.filter(|t| !t.is_empty()) else {
                return Ok(Vec::new());
            };
            text.split(',')
                .map(|term| {
                    let (k, v) = term
                        .split_once("==")
                        .or_else(|| term.split_once('='))
                        .ok_or(format!("unsupported selector term {term:?}"))?;
                    if k.ends_with('!') {
                        return Err(format!("unsupported selector term {term:?}"));
                    }
                    Ok((k.to_string(), v.to_string()))
                })
                .collect()
        };
        let fields = terms(params.get("fieldSelector"))?;
        if let Some((k, _)) = fields
            .iter()
            .find(|(k, _)| k != "metadata.name" && k != "metadata.namespace")
        {
            return Err(format!("field label not supported: {k}"));
        }
        Ok(Selector {
            fields,
            labels: terms(params.get("labelSelector"))?,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.fields.iter().all(|(k, v)| {
            meta[k.trim_start_matches("metadata.")]
                .as_str()
                .unwrap_or("")
                == v
        }) && self
            .labels
            .iter()
            .all(|(k, v)| meta["labels"][k].as_str() == Some(v))
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("serialisable"));
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(bytes).boxed())
        .expect("valid response")
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = json!({});
            }
            let target = target.as_object_mut().expect("object");
            for (k, v) in patch {
                if v.is_null() {
                    target.remove(k);
                } else {
                    merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let Some(target) = parse_target(&path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        };
        let plural = KINDS[target.kind].plural;
        let missing = self
            .missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&plural);
        if missing {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        }
        if self
            .forbidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&plural)
        {
            let k = &KINDS[target.kind];
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("{} is forbidden: the test says so", k.plural),
            );
        }
        let params = query_params(&req);
        let method = req.method().clone();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if method != Method::GET {
            self.lock().writes.push(format!("{method} {path}"));
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("reading body: {e}"),
                )
            }
        };
        let parse = || serde_json::from_slice::<Value>(&body).map_err(|e| format!("body: {e}"));
        let bad_request = |e: String| status(StatusCode::BAD_REQUEST, "BadRequest", e);
        match (method, &target.name) {
            (Method::GET, None) if params.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(target, &params)
            }
            (Method::GET, None) => self.list(target, &params),
            (Method::GET, Some(name)) => self.get(&target, name),
            (Method::POST, None) => match parse() {
                Ok(object) => self.create(target, object),
                Err(e) => bad_request(e),
            },
            (Method::PUT, Some(_)) => match parse() {
                Ok(object) => self.replace(target, object),
                Err(e) => bad_request(e),
            },
            (Method::PATCH, Some(_)) => {
                if content_type.starts_with("application/json-patch+json") {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "JSON patches are not supported here".into(),
                    );
                }
                match parse() {
                    Ok(patch) => self.patch(
                        target,
                        patch,
                        content_type.starts_with("application/apply-patch"),
                    ),
                    Err(e) => bad_request(e),
                }
            }
            (Method::DELETE, Some(name)) => {
                let key = (target.kind, target.namespace.clone(), name.clone());
                match self.lock().remove(&key) {
                    Some(object) => json_response(StatusCode::OK, &object),
                    None => not_found(&target, name),
                }
            }
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} is not supported on {path}"),
            ),
        }
    }

    fn get(&self, target: &Target, name: &str) -> Response<Body> {
        match self
            .lock()
            .objects
            .get(&(target.kind, target.namespace.clone(), name.to_string()))
        {
            Some(object) => json_response(StatusCode::OK, object),
            None => not_found(target, name),
        }
    }

    fn list(&self, target: Target, params: &BTreeMap<String, String>) -> Response<Body> {
        let selector = match Selector::parse(params) {
            Ok(s) => s,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
        };
        let store = self.lock();
        // The continue token: the list's resourceVersion, then the last key returned.
        let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => match decode_continue(token) {
                Some((rv, _, _)) if rv < store.oldest => {
                    return status(
                        StatusCode::GONE,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.".into(),
                    )
                }
                Some((rv, ns, name)) => (rv, Some((ns, name))),
                None => return status(StatusCode::BAD_REQUEST, "BadRequest", format!("invalid continue token {token:?}")),
            },
            None => (store.rv, None),
        };
        let limit = params
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = None;
        let start = (
            target.kind,
            after.as_ref().map_or(String::new(), |a| a.0.clone()),
            after.as_ref().map_or(String::new(), |a| a.1.clone()),
        );
        for ((kind, ns, name), object) in store.objects.range(start..) {
            if *kind != target.kind {
                break;
            }
            if after
                .as_ref()
                .is_some_and(|(a_ns, a_name)| a_ns == ns && a_name == name)
            {
                continue;
            }
            if !target.namespace.is_empty() && *ns != target.namespace || !selector.matches(object)
            {
                continue;
            }
            if items.len() == limit {
                more = Some(encode_continue(list_rv, &items_last_key(&items)));
                break;
            }
            items.push(object.clone());
        }
        let k = &KINDS[target.kind];
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if let Some(token) = more {
            metadata["continue"] = json!(token);
        }
        json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", k.kind), "apiVersion": k.api_version, "metadata": metadata, "items": items}),
        )
    }

    fn create(&self, target: Target, mut object: Value) -> Response<Body> {
        let mut store = self.lock();
        store.stamp_new(&mut object, target.kind, &target.namespace);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value".into(),
            );
        }
        let key = (
            target.kind,
            if KINDS[target.kind].namespaced {
                target.namespace.clone()
            } else {
                String::new()
            },
            name.clone(),
        );
        if store.objects.contains_key(&key) {
            let k = &KINDS[target.kind];
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{}.{} {name:?} already exists", k.plural, group_of(k)),
            );
        }
        let stored = store.put(key, object);
        json_response(StatusCode::CREATED, &stored)
    }

    fn replace(&self, target: Target, mut object: Value) -> Response<Body> {
        let name = target.name.clone().expect("named");
        let key = (target.kind, target.namespace.clone(), name.clone());
        let mut store = self.lock();
        let Some(old) = store.objects.get(&key).cloned() else {
            return not_found(&target, &name);
        };
        let given = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !given.is_empty() && given != old["metadata"]["resourceVersion"].as_str().unwrap_or("") {
            let k = &KINDS[target.kind];
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}.{} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                    k.plural,
                    group_of(k)
                ),
            );
        }
        let object = self.subresource_view(&target, &old, {
            for field in [
                "uid",
                "creationTimestamp",
                "generation",
                "namespace",
                "name",
            ] {
                object["metadata"][field] = old["metadata"][field].clone();
            }
            object["apiVersion"] = old["apiVersion"].clone();
            object["kind"] = old["kind"].clone();
            object
        });
        let stored = store.put(key, object);
        json_response(StatusCode::OK, &stored)
    }

    fn patch(&self, target: Target, patch: Value, apply: bool) -> Response<Body> {
        let name = target.name.clone().expect("named");
        let key = (target.kind, target.namespace.clone(), name.clone());
        let mut store = self.lock();
        let old = match store.objects.get(&key).cloned() {
            Some(old) => old,
            // An apply patch creates what does not exist.
            None if apply && !target.status => {
                let mut object = patch.clone();
                object["metadata"]["name"] = json!(name);
                store.stamp_new(&mut object, target.kind, &target.namespace);
                let stored = store.put(key, object);
                return json_response(StatusCode::CREATED, &stored);
            }
            None => return not_found(&target, &name),
        };
        let mut patched = old.clone();
        merge_patch(&mut patched, &patch);
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "namespace",
            "name",
            "resourceVersion",
        ] {
            patched["metadata"][field] = old["metadata"][field].clone();
        }
        let object = self.subresource_view(&target, &old, patched);
        let stored = store.put(key, object);
        json_response(StatusCode::OK, &stored)
    }

    /// What a write through `target` may change: only `status` through `/status`,
    /// everything but `status` through the main resource of a kind with the subresource.
    fn subresource_view(&self, target: &Target, old: &Value, mut new: Value) -> Value {
        if !KINDS[target.kind].has_status {
            return new;
        }
        if target.status {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
        new
    }

    fn watch(&self, target: Target, params: &BTreeMap<String, String>) -> Response<Body> {
        let selector = match Selector::parse(params) {
            Ok(s) => s,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
        };
        let bookmarks = params
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let k = &KINDS[target.kind];
        let matches = move |c: &Change| {
            c.kind == target.kind
                && (target.namespace.is_empty()
                    || c.object["metadata"]["namespace"].as_str()
                        == Some(target.namespace.as_str()))
                && selector.matches(&c.object)
        };

        let store = self.lock();
        let live = store.changes.subscribe();
        let requested = params
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or("");
        let mut first: Vec<Value> = Vec::new();
        let from = match requested {
            // No version, or "0": the current state as ADDED events, then changes.
            "" | "0" => {
                for (key, object) in &store.objects {
                    let c = Change {
                        rv: 0,
                        kind: key.0,
                        event: "ADDED",
                        object: object.clone(),
                    };
                    if matches(&c) {
                        first.push(json!({"type": "ADDED", "object": c.object}));
                    }
                }
                store.rv
            }
            rv => match rv.parse::<u64>() {
                Ok(rv) if rv >= store.oldest => {
                    for c in store.history.iter().filter(|c| c.rv > rv) {
                        if matches(c) {
                            first.push(json!({"type": c.event, "object": c.object}));
                        }
                    }
                    store.rv
                }
                Ok(rv) => {
                    first.push(json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("too old resource version: {rv} ({})", store.oldest),
                        "reason": "Expired", "code": 410,
                    }}));
                    u64::MAX
                }
                Err(_) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("invalid resourceVersion {rv:?}"),
                    )
                }
            },
        };
        drop(store);

        let mut cut = self.cut.clone();
        cut.borrow_and_update();
        let (kind_name, api_version) = (k.kind, k.api_version);
        tokio::spawn(async move {
            let line = |v: &Value| -> Result<Frame<Bytes>, Infallible> {
                let mut bytes = serde_json::to_vec(v).expect("serialisable");
                bytes.push(b'\n');
                Ok(Frame::data(Bytes::from(bytes)))
            };
            for v in &first {
                if tx.send(line(v)).await.is_err() {
                    return;
                }
            }
            if from == u64::MAX {
                return;
            }
            let mut seen = from;
            let mut live = live;
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut bookmark = tokio::time::interval(Duration::from_millis(500));
            bookmark.tick().await;
            loop {
                let until_deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    change = live.recv() => match change {
                        Ok(c) if c.rv <= seen => {}
                        Ok(c) => {
                            seen = c.rv;
                            if matches(&c) && tx.send(line(&json!({"type": c.event, "object": c.object}))).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = bookmark.tick(), if bookmarks => {
                        let mark = json!({"type": "BOOKMARK", "object": {
                            "kind": kind_name, "apiVersion": api_version, "metadata": {"resourceVersion": seen.to_string()},
                        }});
                        if tx.send(line(&mark)).await.is_err() {
                            return;
                        }
                    }
                    _ = cut.changed() => return,
                    _ = until_deadline => return,
                    _ = tx.closed() => return,
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("transfer-encoding", "chunked")
            .body(BodyExt::boxed(body))
            .expect("valid response")
    }
}

fn group_of(k: &Kind) -> &'static str {
    k.api_version.split_once('/').map_or("", |(g, _)| g)
}

fn not_found(target: &Target, name: &str) -> Response<Body> {
    let k = &KINDS[target.kind];
    let resource = if group_of(k).is_empty() {
        k.plural.to_string()
    } else {
        format!("{}.{}", k.plural, group_of(k))
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{resource} {name:?} not found"),
    )
}

fn items_last_key(items: &[Value]) -> (String, String) {
    let last = items.last().expect("a full page has items");
    (
        last["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        last["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn encode_continue(rv: u64, (ns, name): &(String, String)) -> String {
    let text = format!("{rv}/{ns}/{name}");
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '/');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.to_string(),
        parts.next()?.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut target, &json!({"c": [1, 2]}));
        assert_eq!(target, json!({"a": "z", "c": [1, 2]}));
    }

    #[test]
    fn urls_map_to_kinds_namespaces_and_subresources() {
        let t =
            parse_target("/apis/networking.k8s.io/v1/namespaces/ns1/ingresses/web/status").unwrap();
        assert_eq!(
            (
                KINDS[t.kind].kind,
                t.namespace.as_str(),
                t.name.as_deref(),
                t.status
            ),
            ("Ingress", "ns1", Some("web"), true)
        );
        let t = parse_target("/api/v1/services").unwrap();
        assert_eq!(
            (KINDS[t.kind].kind, t.namespace.as_str(), t.name),
            ("Service", "", None)
        );
        let t = parse_target("/apis/networking.k8s.io/v1/ingressclasses/portico").unwrap();
        assert_eq!(
            (KINDS[t.kind].kind, t.name.as_deref()),
            ("IngressClass", Some("portico"))
        );
        assert!(
            parse_target("/api/v1/namespaces/x/secrets/s/status").is_none(),
            "Secrets have no status subresource"
        );
        assert!(parse_target("/apis/apps/v1/deployments").is_none());
    }

    #[test]
    fn secrets_string_data_is_stored_as_base64_data() {
        let mut secret =
            json!({"stringData": {"a": "hello", "b": "hi", "c": ""}, "data": {"d": "eA=="}});
        fold_string_data(&mut secret);
        assert_eq!(
            secret,
            json!({"data": {"a": "aGVsbG8=", "b": "aGk=", "c": "", "d": "eA=="}})
        );
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(42, &("ns".into(), "a/b".into()));
        assert_eq!(
            decode_continue(&token),
            Some((42, "ns".into(), "a/b".into()))
        );
        assert_eq!(decode_continue("zz"), None);
    }
}
