//! Configured request headers: validation, secret detection and redacted Debug output.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use outlast_core::ConfigError;

/// Whether a header carries a secret: `Authorization`, `Proxy-Authorization`, `Cookie`, and
/// any header whose name contains `key`, `token`, `secret` or `auth` (case-insensitive).
///
/// The values of such headers are marked sensitive ([`HeaderValue::set_sensitive`]), shown as
/// `<redacted>` in Debug output and never logged.
pub fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || ["key", "token", "secret", "auth"]
        .iter()
        .any(|s| n.contains(s))
}

/// The value of the [`KEY_HEADER`](super::KEY_HEADER) (and of each
/// [`KEYS_HEADER`](super::KEYS_HEADER) line) for a payload key: the key's UTF-8 bytes, with
/// every byte that is not visible ASCII (`!` to `~`), and `%` and `,` themselves,
/// percent-encoded as `%XX` (upper-case hex). A key of visible ASCII without `%` or `,` is
/// sent unchanged; any other key still arrives, and any percent-decoder gives it back
/// exactly. Encoding `,` keeps the keys of a merged request apart even where a proxy folds
/// its `x-outlast-keys` lines into one comma-separated value.
///
/// # Examples
///
/// ```
/// use outlast_client::http::encode_key;
///
/// assert_eq!(encode_key("batch-42"), "batch-42");
/// assert_eq!(encode_key("a b\nc"), "a%20b%0Ac");
/// assert_eq!(encode_key("größe 100%"), "gr%C3%B6%C3%9Fe%20100%25");
/// assert_eq!(encode_key("a,b"), "a%2Cb");
/// ```
pub fn encode_key(key: &str) -> Cow<'_, str> {
    let plain = |b: u8| (b'!'..=b'~').contains(&b) && b != b'%' && b != b',';
    if key.bytes().all(plain) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Validates one header, marking its value sensitive when the name says it is a secret.
/// Errors name `param`; a rejected value is never echoed (it may be a secret).
pub(crate) fn parse_header(
    param: &'static str,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        ConfigError::invalid(param, format!("invalid header name {:?}", truncate(name)))
    })?;
    let mut header_value = HeaderValue::from_str(value).map_err(|_| {
        ConfigError::invalid(
            param,
            format!(
                "invalid value for header {header_name}: control characters or non-visible \
                 bytes are not allowed"
            ),
        )
    })?;
    if is_sensitive_header(header_name.as_str()) {
        header_value.set_sensitive(true);
    }
    Ok((header_name, header_value))
}

/// Parses `OUTLAST_HEADERS`-style text: `k=v,k=v`, whitespace around keys and values
/// trimmed, values percent-decoded (as `OTEL_EXPORTER_OTLP_HEADERS`). Empty items are
/// skipped.
pub(crate) fn parse_header_list(
    param: &'static str,
    text: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut out = Vec::new();
    for item in text.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError::invalid(
                param,
                format!(
                    "expected key=value pairs separated by commas, found an item without '=' \
                     (starting {:?})",
                    truncate(item.trim())
                ),
            ));
        };
        let key = k.trim();
        if key.is_empty() {
            return Err(ConfigError::invalid(param, "a header name is empty"));
        }
        let value = percent_decode(v.trim()).ok_or_else(|| {
            ConfigError::invalid(
                param,
                format!("value of header {key:?} has an invalid percent-encoding"),
            )
        })?;
        out.push(parse_header(param, key, &value)?);
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A header map whose Debug output shows sensitive values as `<redacted>`.
pub(crate) struct Redacted<'a>(pub(crate) &'a HeaderMap);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, value) in self.0 {
            if value.is_sensitive() || is_sensitive_header(name.as_str()) {
                m.entry(&name.as_str(), &"<redacted>");
            } else {
                m.entry(&name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
            }
        }
        m.finish()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_headers_are_recognised_by_name() {
        for n in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "x-api-key",
            "X-Auth-Token",
            "x-client-secret",
            "dd-api-key",
            "x-honeycomb-team-auth",
        ] {
            assert!(is_sensitive_header(n), "{n}");
        }
        for n in ["content-type", "x-scope-orgid", "user-agent"] {
            assert!(!is_sensitive_header(n), "{n}");
        }
    }

    #[test]
    fn header_list_is_trimmed_and_percent_decoded() {
        let h = parse_header_list("OUTLAST_HEADERS", " a = 1 ,b=x%20y%2Cz,, api-key=s%3Dcret ")
            .expect("valid list");
        let got: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().expect("ascii").to_owned()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y,z".to_owned()),
                ("api-key".to_owned(), "s=cret".to_owned())
            ]
        );
        assert!(h[2].1.is_sensitive());
        assert!(!h[0].1.is_sensitive());
    }

    #[test]
    fn header_list_errors_name_the_parameter_and_hide_values() {
        for bad in ["novalue", "=v", "a=%zz", "a=%4", "bad name=v", "a=x\u{7f}y"] {
            let e = parse_header_list("OUTLAST_HEADERS", bad).expect_err(bad);
            let ConfigError::Invalid { param, .. } = &e else {
                panic!("unexpected {e:?}")
            };
            assert_eq!(*param, "OUTLAST_HEADERS");
        }
        let e = parse_header_list("OUTLAST_HEADERS", "authorization=Bearer sec\nret")
            .expect_err("newline in value");
        assert!(!e.to_string().contains("sec"), "{e}");
    }

    #[test]
    fn redacted_debug_hides_secret_values() {
        let mut m = HeaderMap::new();
        let (k, v) = parse_header("headers", "authorization", "Bearer hunter2").expect("ok");
        m.insert(k, v);
        let (k, v) = parse_header("headers", "x-tenant", "acme").expect("ok");
        m.insert(k, v);
        let s = format!("{:?}", Redacted(&m));
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>") && s.contains("acme"), "{s}");
    }
}
