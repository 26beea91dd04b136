//! The headers an Ingress's routes change: `request-headers-*`, `response-headers-*`,
//! `custom-headers` (a ConfigMap's entries on every response) and CORS. A value that
//! cannot be used is reported and left out; CORS that cannot be read stays off.

use super::fragment::ObjectReads;
use crate::annotations::{Annotations, InvalidAnnotation};
use crate::diagnostic::{Problem, Problems, Reason};
use portico_model::{Cors, HeaderEdits};

/// The header edits of both directions, `None` when there are none. `custom-headers`
/// entries are set first, so that `response-headers-set` can override them.
pub(super) fn header_edits(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> Option<HeaderEdits> {
    let mut edits = HeaderEdits::default();
    edits.response.set = custom_headers(a, reads, problems);
    for (changes, side) in [
        (&mut edits.request, "request"),
        (&mut edits.response, "response"),
    ] {
        changes.remove = problems
            .take(a.header_names(&format!("{side}-headers-remove")))
            .unwrap_or_default();
        changes.set.extend(
            problems
                .take(a.header_lines(&format!("{side}-headers-set")))
                .unwrap_or_default(),
        );
        changes.add = problems
            .take(a.header_lines(&format!("{side}-headers-add")))
            .unwrap_or_default();
    }
    (edits != HeaderEdits::default()).then_some(edits)
}

/// A route's own header edits over the controller ConfigMap's (`proxy-set-headers`,
/// `add-headers`, `hide-headers`): a global edit applies unless the route's own edits name
/// the same header.
pub(super) fn over_global(own: Option<HeaderEdits>, global: &HeaderEdits) -> Option<HeaderEdits> {
    if *global == HeaderEdits::default() {
        return own;
    }
    let mut edits = own.unwrap_or_default();
    for (changes, global) in [
        (&mut edits.request, &global.request),
        (&mut edits.response, &global.response),
    ] {
        let named: std::collections::HashSet<String> = changes
            .remove
            .iter()
            .cloned()
            .chain(
                changes
                    .set
                    .iter()
                    .chain(&changes.add)
                    .map(|(n, _)| n.clone()),
            )
            .collect();
        let mine = |n: &String| !named.contains(n);
        changes
            .remove
            .extend(global.remove.iter().filter(|n| mine(n)).cloned());
        let set: Vec<(String, String)> = global
            .set
            .iter()
            .filter(|(n, _)| mine(n))
            .cloned()
            .collect();
        changes.set.splice(0..0, set);
    }
    Some(edits)
}

/// `custom-headers`: the entries of a ConfigMap of the Ingress's namespace, set on every
/// answer.
fn custom_headers(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> Vec<(String, String)> {
    config_map_entries(a, "custom-headers", reads, problems)
}

/// The entries of the ConfigMap the annotation `name` names, each a header name (lower
/// case) and value. Only the Ingress's own namespace is read; an entry that is not a
/// header is reported and left out.
pub(super) fn config_map_entries(
    a: &Annotations<'_>,
    name: &str,
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> Vec<(String, String)> {
    let Some((namespace, config_map_name)) = problems.take(a.object_ref(name, reads.namespace))
    else {
        return Vec::new();
    };
    let key = a.get(name).map(|(k, _)| k).unwrap_or_default();
    if namespace != reads.namespace {
        let msg = format!("annotation {key}: ConfigMap {namespace}/{config_map_name} is in another namespace; only the Ingress's own is read");
        problems.push(Problem::invalid(msg));
        return Vec::new();
    }
    let Some(config_map) = reads.config_map(&config_map_name) else {
        problems.push(Problem::new(
            Reason::ConfigMapNotFound,
            format!("annotation {key}: ConfigMap {namespace}/{config_map_name} does not exist"),
        ));
        return Vec::new();
    };
    let mut headers = Vec::new();
    for (entry, value) in config_map.data.iter().flatten() {
        let parsed = http::HeaderName::from_bytes(entry.as_bytes())
            .ok()
            .zip(http::HeaderValue::from_str(value.trim()).ok());
        match parsed {
            Some((header, _)) => headers.push((header.as_str().to_string(), value.trim().to_string())),
            None => problems.push(Problem::invalid(format!(
                "annotation {key}: ConfigMap {namespace}/{config_map_name} entry {entry:?} is not a header name and value; left out"
            ))),
        }
    }
    headers
}

/// `enable-cors` and the `cors-*` annotations; `None` when CORS is off or a value cannot
/// be used, so that browsers keep refusing cross-origin reads.
pub(super) fn cors(a: &Annotations<'_>, problems: &mut Problems) -> Option<Cors> {
    if problems.take(a.bool("enable-cors")) != Some(true) {
        return None;
    }
    let read = || -> Result<Cors, InvalidAnnotation> {
        let mut cors = Cors::default();
        if let Some(origins) = a.origin_list("cors-allow-origin")? {
            cors.allow_origins = origins;
        }
        if let Some(methods) = a.token_list("cors-allow-methods")? {
            cors.allow_methods = methods;
        }
        if let Some(headers) = a.token_list("cors-allow-headers")? {
            cors.allow_headers = headers;
        }
        if let Some(headers) = a.token_list("cors-expose-headers")? {
            cors.expose_headers = headers;
        }
        if let Some(credentials) = a.bool("cors-allow-credentials")? {
            cors.allow_credentials = credentials;
        }
        if let Some(max_age) = a.count("cors-max-age")? {
            cors.max_age_secs = u64::from(max_age);
        }
        Ok(cors)
    };
    match read() {
        Ok(cors) => Some(cors),
        Err(e) => {
            problems.push(Problem::invalid(format!("{}; CORS stays off", e.message())));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::nginx_annotations as annotations;

    #[test]
    fn cors_is_off_unless_enabled_and_stays_off_on_a_bad_value() {
        let mut problems = Problems::default();
        assert_eq!(
            cors(
                &Annotations::new(Some(&annotations(&[(
                    "cors-allow-origin",
                    "https://a.test"
                )]))),
                &mut problems
            ),
            None
        );
        let on = annotations(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.test"),
            ("cors-max-age", "60"),
        ]);
        let read = cors(&Annotations::new(Some(&on)), &mut problems).unwrap();
        assert_eq!(
            (read.allow_origins, read.max_age_secs),
            (vec!["https://a.test".to_string()], 60)
        );
        assert!(problems.0.is_empty());
        let bad = annotations(&[("enable-cors", "true"), ("cors-max-age", "forever")]);
        assert_eq!(cors(&Annotations::new(Some(&bad)), &mut problems), None);
        assert_eq!(problems.0.len(), 1);
        assert!(
            problems.0[0].message.ends_with("; CORS stays off"),
            "{:?}",
            problems.0
        );
    }
}
