//! Who may reach an Ingress's routes: source ranges, basic auth, external auth, bearer
//! JWTs and client certificates. Each reader returns its policy, or the one problem that
//! makes it unusable; the processor then refuses the routes (503) rather than serve them
//! open (`docs/design/0005-fail-closed-policies.md`).

use super::fragment::ObjectReads;
use crate::annotations::{Annotations, InvalidAnnotation};
use crate::credentials::{self, SecretLayout};
use crate::diagnostic::{Problem, Problems, Reason};
use crate::secret;
use k8s_openapi::api::core::v1::Secret;
use portico_model::{
    AccessPolicy, AuthCache, BasicAuth, Cidr, ClientAuth, ClientVerify, ExternalAuth, JwtAuth,
    Template, TemplatePart,
};
use std::sync::Arc;

/// ingress-nginx's `auth-tls-verify-depth` default.
const DEFAULT_CLIENT_VERIFY_DEPTH: u32 = 1;
/// The key of an `auth-jwt-jwks-secret` Secret that holds the JWKS.
const JWKS_KEY: &str = "jwks.json";
/// The signature algorithms a JWT may use; the default is all of them.
const JWT_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];
/// How long an idle connection to the auth service is kept (`auth-keepalive-timeout`).
const AUTH_KEEPALIVE_TIMEOUT_MS: u64 = 60_000;
/// How long the auth service has to answer before the request gets a 500.
const EXTERNAL_AUTH_TIMEOUT_MS: u64 = 5_000;
/// The realm a basic-auth challenge names when `auth-realm` does not.
const DEFAULT_REALM: &str = "Authentication Required";

/// A Secret and its `namespace/name`.
type NamedSecret = (String, Arc<Secret>);

/// `allowlist-source-range` (or its old name `whitelist-source-range`) and
/// `denylist-source-range`, each `None` when not set.
pub(super) struct SourceRanges {
    pub allow: Option<Vec<Cidr>>,
    pub deny: Option<Vec<Cidr>>,
}

pub(super) fn source_ranges(a: &Annotations<'_>) -> Result<SourceRanges, InvalidAnnotation> {
    let allow = if a.get("allowlist-source-range").is_some() {
        "allowlist-source-range"
    } else {
        "whitelist-source-range"
    };
    Ok(SourceRanges {
        allow: a.cidr_list(allow)?,
        deny: a.cidr_list("denylist-source-range")?,
    })
}

/// `satisfy`: whether either of source ranges and credentials admits (`any`), rather than
/// both (`all`, the default).
pub(super) fn satisfy_any(a: &Annotations<'_>) -> Result<bool, Problem> {
    match a.get("satisfy") {
        None => Ok(false),
        Some((_, v)) if v.trim() == "any" => Ok(true),
        Some((_, v)) if v.trim() == "all" => Ok(false),
        Some((key, v)) => Err(Problem::invalid(format!(
            "annotation {key}: value {v:?} is not \"any\" or \"all\""
        ))),
    }
}

/// `auth-type: basic` with `auth-secret` (own namespace only), `auth-secret-type` and
/// `auth-realm`; `None` without `auth-type`. A user whose entry cannot be read is
/// reported and cannot sign in; the others can.
pub(super) fn basic(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> Result<Option<BasicAuth>, Problem> {
    match a.get("auth-type") {
        None => return Ok(None),
        Some((_, v)) if v.trim().eq_ignore_ascii_case("basic") => {}
        Some((key, v)) => {
            return Err(Problem::invalid(format!(
                "annotation {key}: value {v:?} is not \"basic\" (digest is not supported)"
            )))
        }
    }
    let layout = match a.get("auth-secret-type") {
        None => SecretLayout::File,
        Some((_, v)) if v.trim() == "auth-file" => SecretLayout::File,
        Some((_, v)) if v.trim() == "auth-map" => SecretLayout::Map,
        Some((key, v)) => {
            return Err(Problem::invalid(format!(
                "annotation {key}: value {v:?} is not auth-file or auth-map"
            )))
        }
    };
    let (full, secret) = own_secret(a, "auth-secret", reads)?
        .ok_or_else(|| Problem::invalid("auth-type basic needs annotation auth-secret"))?;
    let (users, rejected) = credentials::read(&full, &secret, layout).map_err(|e| {
        Problem::new(
            Reason::InvalidSecret,
            format!("annotation auth-secret: {e}"),
        )
    })?;
    for r in rejected {
        problems.push(Problem::new(
            Reason::InvalidSecret,
            format!("annotation auth-secret: {r}; that user cannot sign in"),
        ));
    }
    let realm = a
        .realm("auth-realm")?
        .unwrap_or_else(|| DEFAULT_REALM.to_string());
    Ok(Some(BasicAuth { realm, users }))
}

/// `auth-url` and its companions; `None` without `auth-url`. The URLs must be usable;
/// a bad cache or header setting is only reported. `every_rule_has_host` says whether a
/// client's `Host` is bound to a host the Ingress names, which `auth-url` needs before
/// `$host` may say where the auth request goes.
pub(super) fn external(
    a: &Annotations<'_>,
    every_rule_has_host: bool,
    problems: &mut Problems,
) -> Result<Option<ExternalAuth>, Problem> {
    let Some(url) = a.url_template("auth-url")? else {
        return Ok(None);
    };
    auth_url_destination(a, &url, every_rule_has_host)?;
    let signin_redirect_param = problems
        .take(a.token("auth-signin-redirect-param"))
        .unwrap_or_else(|| "rd".to_string());
    let signin = a
        .url_template("auth-signin")?
        .map(|t| with_original_url(t, &signin_redirect_param));
    let request_redirect = match a.get("auth-request-redirect") {
        None => None,
        Some((key, value)) => {
            let template = Template::parse(value.trim()).map_err(|why| {
                Problem::invalid(format!("annotation {key}: value {value:?} has {why}"))
            })?;
            if value.bytes().any(|b| b.is_ascii_control()) {
                return Err(Problem::invalid(format!(
                    "annotation {key}: value {value:?} holds a control character"
                )));
            }
            Some(template)
        }
    };
    let method = a
        .method("auth-method")?
        .unwrap_or_else(|| "GET".to_string());
    let response_headers = problems
        .take(a.header_names("auth-response-headers"))
        .unwrap_or_default();
    let always_set_cookie = problems
        .take(a.bool("auth-always-set-cookie"))
        .unwrap_or(false);
    let cache = match (
        problems.take(a.hash_key_named("auth-cache-key")),
        problems.take(a.cache_duration("auth-cache-duration")),
    ) {
        (Some(key), duration) => {
            let (statuses, duration_ms) = duration.unwrap_or_else(|| (vec![200, 202, 401], 0));
            (duration_ms > 0).then_some(AuthCache {
                key,
                statuses,
                duration_ms,
            })
        }
        (None, _) => None,
    };
    Ok(Some(ExternalAuth {
        url,
        method,
        signin,
        request_redirect,
        response_headers,
        always_set_cookie,
        cache,
        timeout_ms: EXTERNAL_AUTH_TIMEOUT_MS,
        keepalive_ms: auth_keepalive(a, problems),
        request_headers: Vec::new(),
    }))
}

/// `auth-keepalive` (`0` closes each connection to the auth service after its answer)
/// and `auth-keepalive-timeout` (seconds an idle one is kept, 60 by default, as in
/// ingress-nginx). Connections are pooled unless `auth-keepalive` is `0`.
/// `auth-keepalive-requests` and `auth-keepalive-share-vars` are checked and accepted: the
/// pool is the proxy's, shared by every route, and nginx's variables do not exist here.
fn auth_keepalive(a: &Annotations<'_>, problems: &mut Problems) -> Option<u64> {
    let connections = problems.take(a.count("auth-keepalive"));
    let timeout_ms = problems
        .take(a.duration_ms("auth-keepalive-timeout", false))
        .unwrap_or(AUTH_KEEPALIVE_TIMEOUT_MS);
    problems.take(a.count("auth-keepalive-requests"));
    problems.take(a.bool("auth-keepalive-share-vars"));
    (connections != Some(0)).then_some(timeout_ms)
}

/// Refuses an `auth-url` whose host part a client could choose: the auth request
/// carries the client's headers, so it must only ever go where the Ingress's author
/// meant. The host part may hold `$host`, `$http_host` and `$server_port`, and `$host`
/// only when every rule names a host (a client's `Host` then matched one of them).
fn auth_url_destination(
    a: &Annotations<'_>,
    url: &Template,
    every_rule_has_host: bool,
) -> Result<(), Problem> {
    let key = a.get("auth-url").map(|(k, _)| k).unwrap_or_default();
    for part in authority_variables(url) {
        match part {
            TemplatePart::ServerPort => {}
            TemplatePart::Host | TemplatePart::HttpHost if every_rule_has_host => {}
            TemplatePart::Host | TemplatePart::HttpHost => {
                return Err(Problem::invalid(format!(
                    "annotation {key}: the request's host in the URL's host part needs every rule of the Ingress to name a host; with a rule that names none, a client would choose where the auth request goes"
                )))
            }
            other => {
                let shown = Template {
                    parts: vec![other.clone()],
                };
                return Err(Problem::invalid(format!(
                    "annotation {key}: {shown} in the URL's host part would let a client choose where the auth request goes; only $host, $http_host and $server_port may appear there"
                )));
            }
        }
    }
    Ok(())
}

/// The variables between a URL's `://` and the path, query or fragment that follows.
fn authority_variables(url: &Template) -> Vec<&TemplatePart> {
    let mut seen_scheme_end = false;
    let mut in_authority = false;
    let mut found = Vec::new();
    for part in &url.parts {
        match part {
            TemplatePart::Text(t) => {
                let mut rest = t.as_str();
                if !seen_scheme_end {
                    match rest.find("://") {
                        Some(i) => {
                            seen_scheme_end = true;
                            in_authority = true;
                            rest = &rest[i + 3..];
                        }
                        None => continue,
                    }
                }
                if in_authority && rest.contains(['/', '?', '#']) {
                    in_authority = false;
                }
            }
            variable if in_authority => found.push(variable),
            _ => {}
        }
    }
    found
}

/// `auth-signin` with the original URL added in `param`, as ingress-nginx adds it, unless
/// the URL already sets `param` (`?rd=$escaped_request_uri`).
fn with_original_url(mut signin: Template, param: &str) -> Template {
    let text = signin.to_string();
    let query = text.split_once('?').map(|(_, q)| q);
    let sets_param = query.is_some_and(|q| {
        q.split('&').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| k == param && !v.is_empty())
        })
    });
    if sets_param {
        return signin;
    }
    let separator = match query {
        None => "?",
        Some(q) if q.is_empty() || q.ends_with('&') => "",
        Some(_) => "&",
    };
    signin.parts.extend([
        TemplatePart::Text(format!("{separator}{param}=")),
        TemplatePart::Scheme,
        TemplatePart::Text("://".into()),
        TemplatePart::HttpHost,
        TemplatePart::EscapedRequestUri,
    ]);
    signin
}

/// `auth-jwt-jwks-secret` or `auth-jwt-jwks-url`, and their companions; `None` without
/// either.
pub(super) fn jwt(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
) -> Result<Option<JwtAuth>, Problem> {
    let jwks_url = a.url("auth-jwt-jwks-url")?;
    let jwks = match (&jwks_url, a.get("auth-jwt-jwks-secret")) {
        (None, None) => return Ok(None),
        (Some(_), Some((key, _))) => {
            return Err(Problem::invalid(format!(
                "annotation {key}: set either a JWKS Secret or a JWKS URL, not both"
            )));
        }
        (Some(_), None) => String::new(),
        (None, Some(_)) => jwks_from_secret(a, reads)?,
    };
    let algorithms = match a.token_list("auth-jwt-algorithms")? {
        None => JWT_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            let list: Vec<String> = list.split(", ").map(str::to_string).collect();
            if let Some(other) = list
                .iter()
                .find(|alg| !JWT_ALGORITHMS.contains(&alg.as_str()))
            {
                let (key, _) = a.get("auth-jwt-algorithms").unwrap_or_default();
                return Err(Problem::invalid(format!(
                    "annotation {key}: algorithm {other:?} is not one of RS256, ES256, EdDSA"
                )));
            }
            list
        }
    };
    let claims_to_headers = match a.get("auth-jwt-claims-to-headers") {
        None => Vec::new(),
        Some((key, v)) => v
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (claim, header) = pair
                    .split_once(':')
                    .map(|(c, h)| (c.trim(), h.trim()))
                    .unwrap_or(("", ""));
                let header = http::HeaderName::from_bytes(header.as_bytes())
                    .ok()
                    .filter(|_| !claim.is_empty());
                header
                    .map(|h| (claim.to_string(), h.as_str().to_string()))
                    .ok_or_else(|| {
                        Problem::invalid(format!(
                            "annotation {key}: {pair:?} is not claim:Header-Name"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Some(JwtAuth {
        jwks,
        jwks_url,
        issuer: a.attribute("auth-jwt-issuer")?,
        audiences: a
            .get("auth-jwt-audience")
            .map(|(_, v)| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        algorithms,
        leeway_secs: a.duration_ms("auth-jwt-leeway", true)?.unwrap_or(0) / 1000,
        claims_to_headers,
    }))
}

/// The JWKS of `auth-jwt-jwks-secret`: a JSON object with a non-empty `keys` array;
/// the proxy reads the keys themselves.
fn jwks_from_secret(a: &Annotations<'_>, reads: &mut ObjectReads<'_>) -> Result<String, Problem> {
    let Some((full, secret)) = own_secret(a, "auth-jwt-jwks-secret", reads)? else {
        return Err(Problem::invalid("annotation auth-jwt-jwks-secret is empty"));
    };
    let bad = |why: &str| {
        Problem::new(
            Reason::InvalidSecret,
            format!("annotation auth-jwt-jwks-secret: secret {full}: key {JWKS_KEY:?} {why}"),
        )
    };
    let jwks = secret::value(&secret, JWKS_KEY).ok_or_else(|| bad("is missing"))?;
    let jwks = std::str::from_utf8(jwks).map_err(|_| bad("is not text"))?;
    let parsed: serde_json::Value =
        serde_json::from_str(jwks).map_err(|e| bad(&format!("is not JSON: {e}")))?;
    if parsed
        .get("keys")
        .and_then(|k| k.as_array())
        .is_none_or(|k| k.is_empty())
    {
        return Err(bad("has no \"keys\" array with a key in it"));
    }
    Ok(jwks.to_string())
}

/// `auth-tls-*`: `None` when neither `auth-tls-secret` nor `auth-tls-verify-client` is
/// set, or verification is `off`. Unlike ingress-nginx, which then verifies nothing, a
/// verification mode without a CA bundle is refused.
pub(super) fn client_certificates(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
) -> Result<Option<ClientAuth>, Problem> {
    if a.get("auth-tls-secret").is_none() && a.get("auth-tls-verify-client").is_none() {
        return Ok(None);
    }
    let verify = match a.get("auth-tls-verify-client") {
        None => ClientVerify::On,
        Some((key, v)) => match v.trim() {
            "on" => ClientVerify::On,
            "optional" => ClientVerify::Optional,
            "optional_no_ca" => ClientVerify::OptionalNoCa,
            "off" => return Ok(None),
            _ => {
                return Err(Problem::invalid(format!(
                    "annotation {key}: value {v:?} is not one of on, optional, optional_no_ca, off"
                )))
            }
        },
    };
    let Some((name, secret)) = own_secret(a, "auth-tls-secret", reads)? else {
        let (key, _) = a.get("auth-tls-verify-client").unwrap_or_default();
        return Err(Problem::invalid(format!(
            "annotation {key} is set without auth-tls-secret, the CA bundle to verify against"
        )));
    };
    let ca_pem = secret::ca_bundle(&name, &secret).map_err(|e| {
        Problem::new(
            Reason::InvalidSecret,
            format!("annotation auth-tls-secret: {e}"),
        )
    })?;
    Ok(Some(ClientAuth {
        ca_pem,
        verify,
        depth: a
            .count("auth-tls-verify-depth")?
            .unwrap_or(DEFAULT_CLIENT_VERIFY_DEPTH),
        pass_certificate: a
            .bool("auth-tls-pass-certificate-to-upstream")?
            .unwrap_or(false),
        error_page: a.url("auth-tls-error-page")?,
        match_subject: a.regex("auth-tls-match-cn")?,
    }))
}

/// The Secret an annotation names, with its `namespace/name`: only one in the Ingress's
/// own namespace is read. `None` when the annotation is not set.
fn own_secret(
    a: &Annotations<'_>,
    annotation: &str,
    reads: &mut ObjectReads<'_>,
) -> Result<Option<NamedSecret>, Problem> {
    let Some((namespace, name)) = a.object_ref(annotation, reads.namespace)? else {
        return Ok(None);
    };
    let full = format!("{namespace}/{name}");
    if namespace != reads.namespace {
        return Err(Problem::invalid(format!(
            "annotation {annotation}: secret {full} is in another namespace; only {} is read",
            reads.namespace
        )));
    }
    let secret = reads.secret(&name).ok_or_else(|| {
        Problem::new(
            Reason::SecretNotFound,
            format!("annotation {annotation}: secret {full} does not exist"),
        )
    })?;
    Ok(Some((full, secret)))
}

/// `access` without its external auth (`no-auth-locations`); `None` when nothing is left
/// to check.
pub(super) fn without_external_auth(access: &AccessPolicy) -> Option<AccessPolicy> {
    let rest = AccessPolicy {
        external_auth: None,
        ..access.clone()
    };
    let controlled = !rest.allow_sources.is_empty()
        || !rest.deny_sources.is_empty()
        || rest.basic_auth.is_some()
        || rest.jwt.is_some()
        || rest.refuse.is_some();
    controlled.then_some(rest)
}

/// `auth-proxy-set-headers`: the entries of a ConfigMap of the Ingress's namespace, set on
/// the auth request; their values may hold variables (`$host`, `$http_x_user`...). An
/// entry that is not a header, or names a variable Portico does not know, is reported and
/// left out.
pub(super) fn proxy_set_headers(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> Vec<(String, Template)> {
    let key = a
        .get("auth-proxy-set-headers")
        .map(|(k, _)| k)
        .unwrap_or_default();
    super::headers::config_map_entries(a, "auth-proxy-set-headers", reads, problems)
        .into_iter()
        .filter_map(|(name, value)| match Template::parse(&value) {
            Ok(template) => Some((name, template)),
            Err(why) => {
                problems.push(Problem::invalid(format!(
                    "annotation {key}: entry {name:?} has {why}; left out"
                )));
                None
            }
        })
        .collect()
}
