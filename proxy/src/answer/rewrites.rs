//! What ingress-nginx's `proxy_redirect` and `proxy_cookie_*` change in an upstream's
//! answer: the prefix of `Location` and `Refresh` URLs (`proxy-redirect-from`/`-to`), and
//! the `Domain` and `Path` of its cookies (`proxy-cookie-domain`, `proxy-cookie-path`).

use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use portico_model::{PrefixSwap, Rewrite};

/// Applies the route's answer rewrites, if it has any.
pub fn rewrite_answer(rw: &Rewrite, answer: &mut ResponseHeader) -> Result<()> {
    if let Some(swap) = &rw.location {
        if let Some(location) = answer.headers.get(header::LOCATION) {
            if let Some(new) = swap_prefix(location.as_bytes(), swap) {
                answer.insert_header(header::LOCATION, new)?;
            }
        }
        if let Some(refresh) = answer.headers.get(header::REFRESH) {
            if let Some(new) = swap_refresh(refresh.as_bytes(), swap) {
                answer.insert_header(header::REFRESH, new)?;
            }
        }
    }
    if rw.cookie_domain.is_none() && rw.cookie_path.is_none() {
        return Ok(());
    }
    let cookies: Vec<HeaderValue> = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if cookies.is_empty() {
        return Ok(());
    }
    answer.remove_header(&header::SET_COOKIE);
    for cookie in cookies {
        let new = cookie
            .to_str()
            .ok()
            .and_then(|c| swap_cookie(c, rw.cookie_domain.as_ref(), rw.cookie_path.as_ref()))
            .and_then(|c| HeaderValue::try_from(c).ok())
            .unwrap_or(cookie);
        answer.append_header(header::SET_COOKIE, new)?;
    }
    Ok(())
}

fn swap_prefix(value: &[u8], swap: &PrefixSwap) -> Option<HeaderValue> {
    let rest = value.strip_prefix(swap.from.as_bytes())?;
    let mut out = Vec::with_capacity(swap.to.len() + rest.len());
    out.extend_from_slice(swap.to.as_bytes());
    out.extend_from_slice(rest);
    HeaderValue::from_bytes(&out).ok()
}

/// `Refresh: 5; url=http://...`: the URL after `url=`.
fn swap_refresh(value: &[u8], swap: &PrefixSwap) -> Option<HeaderValue> {
    let at = value
        .windows(4)
        .position(|w| w.eq_ignore_ascii_case(b"url="))?
        + 4;
    let url = swap_prefix(&value[at..], swap)?;
    let mut out = value[..at].to_vec();
    out.extend_from_slice(url.as_bytes());
    HeaderValue::from_bytes(&out).ok()
}

/// The cookie with its `Domain` and `Path` attributes swapped; `None` when neither
/// applies.
fn swap_cookie(
    cookie: &str,
    domain: Option<&PrefixSwap>,
    path: Option<&PrefixSwap>,
) -> Option<String> {
    let mut changed = false;
    let mut parts: Vec<String> = Vec::new();
    for (i, part) in cookie.split(';').enumerate() {
        let attribute = part.trim_start();
        let (name, value) = attribute.split_once('=').unwrap_or((attribute, ""));
        let swapped = match (i, domain, path) {
            (0, _, _) => None,
            (_, Some(d), _) if name.eq_ignore_ascii_case("domain") => {
                let (dot, bare) = match value.strip_prefix('.') {
                    Some(bare) => (".", bare),
                    None => ("", value),
                };
                bare.eq_ignore_ascii_case(&d.from)
                    .then(|| format!(" {name}={dot}{}", d.to))
            }
            (_, _, Some(p)) if name.eq_ignore_ascii_case("path") => value
                .strip_prefix(p.from.as_str())
                .map(|rest| format!(" {name}={}{rest}", p.to)),
            _ => None,
        };
        changed |= swapped.is_some();
        parts.push(swapped.unwrap_or_else(|| part.to_string()));
    }
    changed.then(|| parts.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap(from: &str, to: &str) -> PrefixSwap {
        PrefixSwap {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn locations_and_refreshes_change_only_with_the_prefix() {
        let s = swap("http://internal:8080/", "https://shop.test/");
        assert_eq!(
            swap_prefix(b"http://internal:8080/cart?x=1", &s).unwrap(),
            "https://shop.test/cart?x=1"
        );
        assert_eq!(swap_prefix(b"http://elsewhere/cart", &s), None);
        assert_eq!(
            swap_refresh(b"5; URL=http://internal:8080/next", &s).unwrap(),
            "5; URL=https://shop.test/next"
        );
    }

    #[test]
    fn cookies_change_their_domain_and_path_and_nothing_else() {
        let (d, p) = (swap("internal.svc", "shop.test"), swap("/app/", "/"));
        assert_eq!(
            swap_cookie(
                "sid=a; Domain=.Internal.svc; Path=/app/cart; HttpOnly",
                Some(&d),
                Some(&p)
            )
            .as_deref(),
            Some("sid=a; Domain=.shop.test; Path=/cart; HttpOnly")
        );
        assert_eq!(
            swap_cookie("sid=a; Domain=other.svc; Path=/api", Some(&d), Some(&p)),
            None
        );
        assert_eq!(
            swap_cookie("path=/app/; Secure", Some(&d), Some(&p)),
            None,
            "the cookie's own name and value are never attributes"
        );
    }
}
