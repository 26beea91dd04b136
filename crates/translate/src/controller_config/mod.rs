//! ingress-nginx's controller ConfigMap (`--configmap NS/NAME`): its keys, read with the
//! annotations' grammar, become the defaults of the Ingresses' annotations and the policy
//! every request gets. A key Portico does not act on is reported (a Warning Event on the
//! ConfigMap); a value that does not parse is reported and the key's previous good value
//! stays, so a typo never undoes a working setting.

mod keys;

pub use keys::{configmap_document, KeyStatus, CONTROLLER_KEYS};

use crate::annotations::Annotations;
use crate::cache::{ClusterState, ObjectKey};
use crate::diagnostic::{Diagnostic, ObjectRef, Problems, Reason};
use crate::ingress::{check_annotation_default, global_external_auth};
use k8s_openapi::api::core::v1::ConfigMap;
use portico_model::{
    Compression, Encoding, GlobalPolicy, HeaderEdits, Hsts, StreamTimeouts, TextMatch, TlsVersion,
    TlsVersions, REDIRECT_CODES,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// ingress-nginx's `gzip-types` and `brotli-types` defaults.
const GZIP_TYPES: &str = "application/atom+xml application/javascript application/x-javascript application/json application/rss+xml application/vnd.ms-fontobject application/x-font-ttf application/x-web-app-manifest+json application/xhtml+xml application/xml font/opentype image/svg+xml image/x-icon text/css text/javascript text/plain text/x-component";
const BROTLI_TYPES: &str = "application/xml+rss application/atom+xml application/javascript application/x-javascript application/json application/rss+xml application/vnd.ms-fontobject application/x-font-ttf application/x-web-app-manifest+json application/xhtml+xml application/xml font/opentype image/svg+xml image/x-icon text/css text/javascript text/plain text/x-component";

/// Where `no-auth-locations` leaves auth off unless the ConfigMap says otherwise, as in
/// ingress-nginx: cert-manager's HTTP-01 solver must be reachable.
const DEFAULT_NO_AUTH_LOCATIONS: &str = "/.well-known/acme-challenge";

/// The keys of the controller ConfigMap that Portico acts on, as typed settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ControllerConfig {
    /// Keys that are also annotations, each checked to parse: what an Ingress that does not
    /// set the annotation gets.
    pub annotation_defaults: BTreeMap<String, String>,
    /// `global-auth-*`, as written: read as the `auth-*` annotations of every Ingress that
    /// sets no `auth-url` and does not turn global auth off.
    pub global_auth: BTreeMap<String, String>,
    /// Path prefixes whose routes get no external auth, own or global.
    pub no_auth_locations: Vec<String>,
    hsts: HstsKeys,
    gzip: EncodingKeys,
    brotli: EncodingKeys,
    /// `proxy-set-headers`, `add-headers` and `hide-headers`: under each route's own edits.
    pub headers: HeaderEdits,
    /// `annotation-value-word-blocklist`.
    pub word_blocklist: Vec<String>,
    pub global: GlobalPolicy,
    /// `ssl-protocols`.
    pub tls_versions: TlsVersions,
    /// `ssl-ciphers`.
    pub ciphers: Option<String>,
    /// The `proxy-stream-*` keys, for TCP and UDP services.
    pub streams: StreamDefaults,
    /// The values applied, by key, for keeping when a later value is bad.
    accepted: BTreeMap<String, String>,
    /// The ConfigMaps this was read from (the controller's, and those `add-headers` and
    /// `proxy-set-headers` name), as they were: while they are the same objects, the next
    /// translation reuses this rather than reading and checking every key again.
    inputs: Vec<ConfigMapRead>,
    /// What reading it reported, for the translations that reuse it.
    reported: Vec<Diagnostic>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            annotation_defaults: BTreeMap::new(),
            global_auth: BTreeMap::new(),
            no_auth_locations: vec![DEFAULT_NO_AUTH_LOCATIONS.to_string()],
            hsts: HstsKeys::default(),
            gzip: EncodingKeys::default(),
            brotli: EncodingKeys::default(),
            headers: HeaderEdits::default(),
            word_blocklist: Vec::new(),
            global: GlobalPolicy::default(),
            tls_versions: TlsVersions::default(),
            ciphers: None,
            streams: StreamDefaults::default(),
            accepted: BTreeMap::new(),
            inputs: Vec::new(),
            reported: Vec::new(),
        }
    }
}

/// What every TCP and UDP service gets (the `proxy-stream-*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamDefaults {
    pub timeouts: StreamTimeouts,
    /// `proxy-stream-next-upstream`: try another endpoint when a connect fails.
    pub next_upstream: bool,
    /// Connect attempts in all (`proxy-stream-next-upstream-tries`).
    pub tries: u32,
    /// `proxy-stream-responses`.
    pub responses: u32,
}

impl Default for StreamDefaults {
    /// ingress-nginx's.
    fn default() -> Self {
        StreamDefaults {
            timeouts: StreamTimeouts::default(),
            next_upstream: true,
            tries: 3,
            responses: 1,
        }
    }
}

/// The `hsts*` keys set, over the controller's `--hsts*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HstsKeys {
    enabled: Option<bool>,
    max_age: Option<u64>,
    include_subdomains: Option<bool>,
    preload: Option<bool>,
}

/// `use-gzip`/`enable-brotli` and their `-level`, `-min-length` and `-types` keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct EncodingKeys {
    enabled: bool,
    level: Option<u32>,
    min_length: Option<u32>,
    types: Option<Vec<String>>,
}

impl EncodingKeys {
    /// The encoding when enabled, with ingress-nginx's defaults where a key is not set;
    /// `text/html` is always compressed, as nginx's `gzip_types` says.
    fn encoding(&self, level: u32, min_length: u32, types: &str) -> Option<Encoding> {
        if !self.enabled {
            return None;
        }
        let mut types = self
            .types
            .clone()
            .unwrap_or_else(|| types.split_whitespace().map(String::from).collect());
        if !types.iter().any(|t| t == "text/html" || t == "*") {
            types.push("text/html".into());
        }
        Some(Encoding {
            level: self.level.unwrap_or(level),
            min_length: u64::from(self.min_length.unwrap_or(min_length)),
            types,
        })
    }
}

/// A ConfigMap read, as it was (or that it was not there).
type ConfigMapRead = (ObjectKey, Option<Arc<ConfigMap>>);

/// Why a key's value was not applied: the reason and a message naming key and value.
type Refusal = (Reason, String);

impl ControllerConfig {
    /// The ConfigMap `key` (none: every default), its problems added to `diagnostics`.
    /// `previous` is the configuration of the last translation, whose good values stand in
    /// for bad ones, and which is reused while the ConfigMaps it read are unchanged.
    pub fn read(
        state: &ClusterState,
        key: Option<&ObjectKey>,
        previous: &ControllerConfig,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> ControllerConfig {
        let Some(key) = key else {
            return ControllerConfig::default();
        };
        let unchanged = !previous.inputs.is_empty()
            && previous
                .inputs
                .iter()
                .all(|(k, seen)| match (state.config_maps.get(k), seen) {
                    (Some(now), Some(seen)) => Arc::ptr_eq(now, seen),
                    (None, None) => true,
                    _ => false,
                });
        let config = if unchanged {
            previous.clone()
        } else {
            Self::parse(state, key, previous)
        };
        diagnostics.extend(config.reported.iter().cloned());
        config
    }

    /// Reads and checks every key of ConfigMap `key`.
    fn parse(state: &ClusterState, key: &ObjectKey, previous: &ControllerConfig) -> Self {
        let mut config = ControllerConfig::default();
        let (namespace, name) = key;
        let object = ObjectRef {
            kind: "ConfigMap",
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let mut reported = Vec::new();
        let mut report = |reason, message: String| {
            reported.push(Diagnostic {
                object: object.clone(),
                reason,
                message: portico_model::redact_userinfo(&message).into_owned(),
            })
        };
        let controller_config_map = state.config_maps.get(key);
        config
            .inputs
            .push((key.clone(), controller_config_map.cloned()));
        let Some(config_map) = controller_config_map else {
            report(
                Reason::ConfigMapNotFound,
                "the controller ConfigMap (--configmap) does not exist; every key has its default"
                    .into(),
            );
            config.reported = reported;
            return config;
        };
        let empty = BTreeMap::new();
        let data = config_map.data.as_ref().unwrap_or(&empty);
        for (k, v) in data {
            let Some(status) = keys::status_of(k) else {
                report(
                    Reason::UnsupportedSetting,
                    format!("key {k} is not a key of ingress-nginx's ConfigMap; ignored"),
                );
                continue;
            };
            if let Some(why) = status.not_acted_on(k) {
                report(Reason::UnsupportedSetting, why);
                continue;
            }
            let mut left_out = Vec::new();
            let applied = config.apply(state, namespace, k, v, &mut left_out);
            for message in left_out {
                report(Reason::UnsupportedSetting, message);
            }
            let Err((reason, message)) = applied else {
                config.accepted.insert(k.clone(), v.clone());
                continue;
            };
            let kept = previous.accepted.get(k).filter(|old| {
                *old != v
                    && config
                        .apply(state, namespace, k, old, &mut Vec::new())
                        .is_ok()
            });
            match kept {
                Some(old) => {
                    config.accepted.insert(k.clone(), old.clone());
                    report(
                        reason,
                        format!("{message}; keeping the previous value {old:?}"),
                    );
                }
                None => report(reason, format!("{message}; the default applies")),
            }
        }
        config.global.compression = Compression {
            gzip: config.gzip.encoding(1, 256, GZIP_TYPES),
            brotli: config.brotli.encoding(4, 20, BROTLI_TYPES),
        };
        if !config.global_auth.is_empty() {
            let mut problems = Problems::default();
            match global_external_auth(&config.global_auth, true, &mut problems) {
                Ok(Some(_)) => {}
                Ok(None) => problems.push(crate::diagnostic::Problem::invalid(
                    "global-auth-* keys without global-auth-url do nothing",
                )),
                Err(p) => {
                    config.global_auth = previous.global_auth.clone();
                    let kept = if config.global_auth.is_empty() {
                        "global auth is off"
                    } else {
                        "the previous global auth stays"
                    };
                    report(
                        p.reason,
                        format!("{}; {kept}", settings_message(&p.message)),
                    );
                }
            }
            for p in problems.0 {
                report(p.reason, settings_message(&p.message));
            }
        }
        config.reported = reported;
        config
    }

    /// Applies one key Portico acts on; on a bad value, nothing of the key changes. What a
    /// value names that is accepted but left out goes to `left_out`, for a warning.
    fn apply(
        &mut self,
        state: &ClusterState,
        namespace: &str,
        k: &str,
        v: &str,
        left_out: &mut Vec<String>,
    ) -> Result<(), Refusal> {
        let one = BTreeMap::from([(k.to_string(), v.to_string())]);
        let a = Annotations::settings(&one);
        let invalid = |e: crate::annotations::InvalidAnnotation| {
            (
                Reason::InvalidSetting,
                format!("key {}: value {:?} is not {}", e.key, e.value, e.expected),
            )
        };
        let only = |allowed: &str, why: &str| -> Result<(), Refusal> {
            if v.trim().eq_ignore_ascii_case(allowed) {
                Ok(())
            } else {
                Err((
                    Reason::UnsupportedSetting,
                    format!("key {k}: value {v:?} is not supported, only {allowed:?}: {why}"),
                ))
            }
        };
        match k {
            _ if k.starts_with("global-auth-") => {
                self.global_auth.insert(k.to_string(), v.to_string());
            }
            "no-auth-locations" => self.no_auth_locations = list(v).map(String::from).collect(),
            "annotation-value-word-blocklist" => {
                self.word_blocklist = list(v).map(String::from).collect()
            }
            "hsts" => self.hsts.enabled = a.bool(k).map_err(invalid)?,
            "hsts-include-subdomains" => {
                self.hsts.include_subdomains = a.bool(k).map_err(invalid)?
            }
            "hsts-preload" => self.hsts.preload = a.bool(k).map_err(invalid)?,
            "hsts-max-age" => self.hsts.max_age = a.count(k).map_err(invalid)?.map(u64::from),
            "generate-request-id" => {
                self.global.generate_request_id = a.bool(k).map_err(invalid)?.unwrap_or(true)
            }
            "http-redirect-code" => {
                let code = a.count(k).map_err(invalid)?.unwrap_or(308);
                match u16::try_from(code)
                    .ok()
                    .filter(|c| REDIRECT_CODES.contains(c))
                {
                    Some(c) => self.global.https_redirect_code = c,
                    None => {
                        return Err((
                            Reason::InvalidSetting,
                            format!("key {k}: value {v:?} is not one of 301, 302, 303, 307, 308"),
                        ))
                    }
                }
            }
            "use-gzip" => self.gzip.enabled = a.bool(k).map_err(invalid)?.unwrap_or(false),
            "enable-brotli" => self.brotli.enabled = a.bool(k).map_err(invalid)?.unwrap_or(false),
            "gzip-level" | "brotli-level" => {
                let (keys, levels) = if k == "gzip-level" {
                    (&mut self.gzip, 1..=9)
                } else {
                    (&mut self.brotli, 0..=11)
                };
                match a.count(k).map_err(invalid)? {
                    Some(level) if !levels.contains(&level) => {
                        return Err((
                            Reason::InvalidSetting,
                            format!(
                                "key {k}: value {v:?} is not a level from {} to {}",
                                levels.start(),
                                levels.end()
                            ),
                        ))
                    }
                    level => keys.level = level,
                }
            }
            "upstream-keepalive-timeout" => {
                if let Some(ms) = a.duration_ms(k, false).map_err(invalid)? {
                    self.global.upstream_idle_ms = ms;
                }
            }
            "gzip-min-length" => self.gzip.min_length = a.count(k).map_err(invalid)?,
            "brotli-min-length" => self.brotli.min_length = a.count(k).map_err(invalid)?,
            "gzip-types" | "brotli-types" => {
                let types: Vec<String> =
                    v.split_whitespace().map(str::to_ascii_lowercase).collect();
                let media_type = |t: &str| {
                    t == "*"
                        || t.split_once('/').is_some_and(|(a, b)| {
                            let token = |p: &str| {
                                !p.is_empty()
                                    && p.bytes().all(|c| {
                                        c.is_ascii_alphanumeric() || b"!#$&^_.+-*".contains(&c)
                                    })
                            };
                            token(a) && token(b)
                        })
                };
                if let Some(bad) = types.iter().find(|t| !media_type(t)) {
                    return Err((
                        Reason::InvalidSetting,
                        format!("key {k}: value {v:?} has {bad:?}, which is not a media type"),
                    ));
                }
                if k == "gzip-types" {
                    self.gzip.types = Some(types);
                } else {
                    self.brotli.types = Some(types);
                }
            }
            "block-cidrs" => {
                self.global.block.cidrs = a.cidr_list(k).map_err(invalid)?.unwrap_or_default()
            }
            "block-user-agents" | "block-referers" => {
                let entries: Result<Vec<TextMatch>, _> = list(v).map(TextMatch::parse).collect();
                let entries = entries.map_err(|e| {
                    (
                        Reason::InvalidSetting,
                        format!("key {k}: value {v:?} has a pattern that does not compile: {e}"),
                    )
                })?;
                if k == "block-user-agents" {
                    self.global.block.user_agents = entries;
                } else {
                    self.global.block.referers = entries;
                }
            }
            "hide-headers" => {
                self.headers.response.remove =
                    a.header_names(k).map_err(invalid)?.unwrap_or_default()
            }
            "add-headers" | "proxy-set-headers" => {
                let (read, headers) = headers_of(state, namespace, k, v);
                self.inputs.push(read);
                let headers = headers?;
                if k == "add-headers" {
                    self.headers.response.set = headers;
                } else {
                    self.headers.request.set = headers;
                }
            }
            "proxy-redirect-from" => only(
                "off",
                "rewrite Locations per Ingress with the proxy-redirect-from/-to annotations",
            )?,
            "ssl-protocols" => self.tls_versions = tls_versions(k, v, left_out)?,
            "proxy-stream-timeout" => {
                self.streams.timeouts.idle_ms =
                    a.duration_ms(k, false).map_err(invalid)?.unwrap_or(600_000)
            }
            "proxy-stream-next-upstream-timeout" => {
                self.streams.timeouts.next_upstream_ms =
                    a.duration_ms(k, true).map_err(invalid)?.unwrap_or(0)
            }
            "proxy-stream-next-upstream" => {
                self.streams.next_upstream = a.bool(k).map_err(invalid)?.unwrap_or(true)
            }
            "proxy-stream-next-upstream-tries" => {
                // nginx's 0 is "no limit": every endpoint, bounded here as the HTTP tries are.
                self.streams.tries = match a.count(k).map_err(invalid)?.unwrap_or(3) {
                    0 => 16,
                    n => n.min(16),
                }
            }
            "proxy-stream-responses" => {
                self.streams.responses = a.count(k).map_err(invalid)?.unwrap_or(1)
            }
            "ssl-ciphers" => {
                self.ciphers = Some(crate::secret::cipher_list(v).map_err(|expected| {
                    (
                        Reason::InvalidSetting,
                        format!("key {k}: value {v:?} is not {expected}"),
                    )
                })?)
            }
            "allow-backend-server-header" => {
                self.global.backend_server_header = a.bool(k).map_err(invalid)?.unwrap_or(false)
            }
            "server-tokens" | "allow-cross-namespace-resources" => only("false", status_note(k))?,
            "strict-validate-path-type" | "ignore-invalid-headers" => only("true", status_note(k))?,
            _ => {
                check_annotation_default(k, v)
                    .map_err(|m| (Reason::InvalidSetting, settings_message(&m)))?;
                self.annotation_defaults
                    .insert(k.to_string(), v.to_string());
            }
        }
        Ok(())
    }

    /// `Strict-Transport-Security` with the `hsts*` keys over `flags` (the controller's
    /// `--hsts*` flags): a key that is set wins, as the ConfigMap is the live setting.
    pub fn hsts(&self, flags: Option<Hsts>) -> Option<Hsts> {
        let keys = self.hsts;
        if keys.enabled == Some(false) {
            return None;
        }
        let base = flags.or_else(|| {
            (keys.enabled == Some(true)).then_some(Hsts {
                max_age: 31_536_000,
                include_subdomains: true,
                preload: false,
            })
        })?;
        Some(Hsts {
            max_age: keys.max_age.unwrap_or(base.max_age),
            include_subdomains: keys.include_subdomains.unwrap_or(base.include_subdomains),
            preload: keys.preload.unwrap_or(base.preload),
        })
    }

    /// Whether `path` (as an Ingress writes it) is one where external auth is left off.
    pub fn is_no_auth_location(&self, path: &str) -> bool {
        self.no_auth_locations
            .iter()
            .any(|l| path.starts_with(l.as_str()))
    }

    /// The annotation of an Ingress that contains a blocked word, and the word.
    pub fn blocked_word<'a>(
        &'a self,
        annotations: Option<&'a BTreeMap<String, String>>,
    ) -> Option<(&'a str, &'a str)> {
        if self.word_blocklist.is_empty() {
            return None;
        }
        annotations?
            .iter()
            .filter(|(k, _)| {
                k.starts_with(crate::annotations::PORTICO_PREFIX)
                    || k.starts_with(crate::annotations::NGINX_PREFIX)
            })
            .find_map(|(k, v)| {
                let word = self
                    .word_blocklist
                    .iter()
                    .find(|w| v.contains(w.as_str()))?;
                Some((k.as_str(), word.as_str()))
            })
    }
}

/// `ssl-protocols`: the versions named, as the range OpenSSL takes. Versions below 1.2
/// are left out with a warning: Portico offers none.
fn tls_versions(k: &str, v: &str, left_out: &mut Vec<String>) -> Result<TlsVersions, Refusal> {
    let mut named = Vec::new();
    for word in v.split_whitespace() {
        match word {
            "TLSv1.2" => named.push(TlsVersion::Tls12),
            "TLSv1.3" => named.push(TlsVersion::Tls13),
            "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => left_out.push(format!(
                "key {k}: {word} is not offered: Portico's HTTPS listener offers TLS 1.2 and 1.3 only"
            )),
            _ => {
                return Err((
                    Reason::InvalidSetting,
                    format!("key {k}: value {v:?} names {word:?}, which is not one of SSLv2, SSLv3, TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
                ))
            }
        }
    }
    match (named.iter().min(), named.iter().max()) {
        (Some(&min), Some(&max)) => Ok(TlsVersions { min, max }),
        _ => Err((
            Reason::InvalidSetting,
            format!("key {k}: value {v:?} names neither TLSv1.2 nor TLSv1.3"),
        )),
    }
}

/// The entries of a comma-separated list, trimmed, empty ones left out.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// The note of a key whose only value is the one Portico's behaviour matches.
fn status_note(k: &str) -> &'static str {
    match keys::status_of(k) {
        Some(KeyStatus::Different(note)) => note,
        _ => "",
    }
}

/// A reader's message about an annotation, told about the ConfigMap key it was read from.
fn settings_message(message: &str) -> String {
    let message = message.replace(crate::annotations::NGINX_PREFIX, "");
    match message.strip_prefix("annotation ") {
        Some(rest) => format!("key {rest}"),
        None => message,
    }
}

/// `add-headers` and `proxy-set-headers`: the entries of ConfigMap `NS/NAME` (a bare name
/// is in the controller ConfigMap's namespace), each a header name and its value.
fn headers_of(
    state: &ClusterState,
    namespace: &str,
    k: &str,
    v: &str,
) -> (ConfigMapRead, Result<Vec<(String, String)>, Refusal>) {
    let v = v.trim();
    let (ns, name) = v.split_once('/').unwrap_or((namespace, v));
    let key = (ns.to_string(), name.to_string());
    let config_map = state.config_maps.get(&key).cloned();
    let headers = match &config_map {
        None => Err((
            Reason::ConfigMapNotFound,
            format!("key {k}: ConfigMap {ns}/{name} does not exist"),
        )),
        Some(config_map) => config_map_headers(config_map, k, ns, name),
    };
    ((key, config_map), headers)
}

/// The entries of ConfigMap `ns/name`, each a header name and its value.
fn config_map_headers(
    config_map: &ConfigMap,
    k: &str,
    ns: &str,
    name: &str,
) -> Result<Vec<(String, String)>, Refusal> {
    let mut headers = Vec::new();
    for (entry, value) in config_map.data.iter().flatten() {
        let value = value.trim();
        let header = http::HeaderName::from_bytes(entry.as_bytes())
            .ok()
            .filter(|_| http::HeaderValue::from_str(value).is_ok());
        match header {
            Some(header) => headers.push((header.as_str().to_string(), value.to_string())),
            None => {
                return Err((
                    Reason::InvalidSetting,
                    format!(
                    "key {k}: ConfigMap {ns}/{name} entry {entry:?} is not a header name and value"
                ),
                ))
            }
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests;
