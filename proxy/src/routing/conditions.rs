//! `match-headers`, `match-methods` and `match-query`, compiled once per snapshot: the
//! conditions a request must meet, beyond its path, to take a route.

use http::request::Parts;
use http::{HeaderName, Method};
use portico_model::{RequestConditions, ValueRule};
use std::borrow::Cow;

#[derive(Debug)]
pub struct CompiledConditions {
    headers: Vec<(HeaderName, Rule)>,
    methods: Vec<Method>,
    query: Vec<(String, Rule)>,
}

#[derive(Debug)]
enum Rule {
    Present,
    Equals(String),
    Matches(regex::Regex),
}

impl Rule {
    fn compile(rule: &ValueRule) -> Result<Self, String> {
        Ok(match rule {
            ValueRule::Present => Rule::Present,
            ValueRule::Equals(v) => Rule::Equals(v.clone()),
            ValueRule::Matches(p) => Rule::Matches(
                portico_model::pattern::value_regex(p)
                    .map_err(|e| format!("pattern {p:?}: {e}"))?,
            ),
        })
    }

    fn admits(&self, value: &[u8]) -> bool {
        match self {
            Rule::Present => true,
            Rule::Equals(v) => v.as_bytes() == value,
            Rule::Matches(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

impl CompiledConditions {
    pub fn compile(c: &RequestConditions) -> Result<Self, String> {
        let headers = c
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("header name {:?}", h.name))?;
                Ok((name, Rule::compile(&h.rule)?))
            })
            .collect::<Result<_, String>>()?;
        let methods = c
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("method {m:?}")))
            .collect::<Result<_, _>>()?;
        let query = c
            .query
            .iter()
            .map(|q| Ok((q.name.clone(), Rule::compile(&q.rule)?)))
            .collect::<Result<_, String>>()?;
        Ok(CompiledConditions {
            headers,
            methods,
            query,
        })
    }

    /// Every condition holds. A header condition holds when any value of the header
    /// admits; a query condition looks at the first occurrence of the parameter.
    pub fn admit(&self, req: &Parts) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&req.method) {
            return false;
        }
        let headers_hold = self.headers.iter().all(|(name, rule)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| rule.admits(v.as_bytes()))
        });
        headers_hold
            && self.query.iter().all(|(name, rule)| {
                match query_value(req.uri.query().unwrap_or(""), name) {
                    Some(value) => rule.admits(value.as_bytes()),
                    None => false,
                }
            })
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(n) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let plus_as_space = s.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&plus_as_space)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::ValueCondition;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn cond(name: &str, rule: ValueRule) -> ValueCondition {
        ValueCondition {
            name: name.into(),
            rule,
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let c = CompiledConditions::compile(&RequestConditions {
            headers: vec![
                cond("x-env", ValueRule::Equals("beta".into())),
                cond("x-user", ValueRule::Matches("^a[0-9]+$".into())),
            ],
            methods: vec!["GET".into(), "HEAD".into()],
            query: vec![
                cond("v", ValueRule::Equals("2 b".into())),
                cond("debug", ValueRule::Present),
            ],
        })
        .unwrap();
        let good = [("x-env", "beta"), ("x-user", "a42")];
        assert!(c.admit(&request("GET", "/p?v=2+b&debug", &good)));
        assert!(c.admit(&request("HEAD", "/p?debug=1&v=2%20b", &good)));
        assert!(
            !c.admit(&request("POST", "/p?v=2+b&debug", &good)),
            "method"
        );
        assert!(
            !c.admit(&request("GET", "/p?v=2+b", &good)),
            "missing parameter"
        );
        assert!(
            !c.admit(&request("GET", "/p?v=3&v=2+b&debug", &good)),
            "the first occurrence counts"
        );
        assert!(
            !c.admit(&request(
                "GET",
                "/p?v=2+b&debug",
                &[("x-env", "Beta"), ("x-user", "a42")]
            )),
            "values are case-sensitive"
        );
        assert!(
            !c.admit(&request(
                "GET",
                "/p?v=2+b&debug",
                &[("x-env", "beta"), ("x-user", "a42b")]
            )),
            "pattern"
        );
        assert!(
            c.admit(&request(
                "GET",
                "/p?v=2+b&debug",
                &[("x-env", "alpha"), ("x-env", "beta"), ("x-user", "a1")]
            )),
            "any value"
        );
    }

    #[test]
    fn a_bad_pattern_does_not_compile() {
        let c = RequestConditions {
            headers: vec![cond("x", ValueRule::Matches("(".into()))],
            ..Default::default()
        };
        assert!(CompiledConditions::compile(&c).is_err());
    }
}
