//! The demo's own HTTP: one blocking HTTP/1.1 request per connection, to check that the mesh
//! serves (the gateway's product page, the sidecars' admin APIs); and what it reads in the
//! answers (the page's stars, Prometheus counters).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A response.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    /// Status code.
    pub(super) status: u16,
    /// The status line and headers, as received.
    pub(super) head: String,
    /// The body (de-chunked).
    pub(super) body: String,
}

impl Reply {
    /// The first value of header `name` (case-insensitive).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `METHOD target` with `Host: host`, extra headers and a body to `address`, on a fresh
/// connection, and reads the whole response (up to 15 s).
pub(super) fn request(
    address: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream
        .write_all(text.as_bytes())
        .with_context(|| format!("sending {method} {target} to {address}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to {method} {target} from {address}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("a malformed response from {address}: {text:?}");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("a response without a status from {address}: {head:?}"))?;
    let mut reply = Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(&reply.body).with_context(|| format!("a malformed chunked body from {address}"))?;
    }
    Ok(reply)
}

/// `GET target` with `Host: host`.
pub(super) fn get(address: SocketAddr, target: &str, host: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    request(address, "GET", target, host, headers, "")
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes (checked at least
/// once).
pub(super) fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the product page shows in its reviews column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reviews {
    /// Reviews without stars (reviews v1).
    NoStars,
    /// Black stars (reviews v2).
    Black,
    /// Red stars (reviews v3).
    Red,
    /// Reviews with "Ratings service is currently unavailable" (v2 or v3, ratings failed).
    RatingsUnavailable,
    /// "Sorry, product reviews are currently unavailable for this book."
    Unavailable,
}

/// The reviews column of a product page.
pub(super) fn reviews(page: &str) -> Reviews {
    if page.contains("Sorry, product reviews are currently unavailable for this book.") {
        Reviews::Unavailable
    } else if page.contains("<font color=\"black\">") {
        Reviews::Black
    } else if page.contains("<font color=\"red\">") {
        Reviews::Red
    } else if page.contains("Ratings service is currently unavailable") {
        Reviews::RatingsUnavailable
    } else {
        Reviews::NoStars
    }
}

/// The reviews version that served a product page (its `<!-- reviews: version=… -->`).
pub(super) fn reviews_version(page: &str) -> Option<&str> {
    let rest = page.split_once("<!-- reviews: version=")?.1;
    rest.split_whitespace().next()
}

/// The sum of the Prometheus samples of `name` whose labels include every `labels` pair
/// (`listener="inbound"`), or `None` when there is none.
pub(super) fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_set, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once('}') {
                Some((set, value)) => (set, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if !labels.iter().all(|pair| label_set.split(',').any(|l| l == *pair)) {
            continue;
        }
        if let Ok(value) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(dechunk("5\r\nab"), None);
    }

    #[test]
    fn pages_are_read_for_their_reviews() {
        let v2 = "<!-- reviews: version=v2 podname=reviews-v2 clustername=null -->\n<font color=\"black\">★★★★☆</font>";
        assert_eq!(reviews(v2), Reviews::Black);
        assert_eq!(reviews_version(v2), Some("v2"));
        assert_eq!(reviews("<font color=\"red\">★</font>"), Reviews::Red);
        assert_eq!(
            reviews("<p><i>Ratings service is currently unavailable</i></p>"),
            Reviews::RatingsUnavailable
        );
        assert_eq!(reviews("<blockquote>x</blockquote>"), Reviews::NoStars);
        assert_eq!(
            reviews("<p>Sorry, product reviews are currently unavailable for this book.</p>"),
            Reviews::Unavailable
        );
    }

    #[test]
    fn counters_are_summed_over_matching_labels() {
        let text = "# TYPE x counter\n\
                    weft_cx_total{listener=\"inbound\",a=\"1\"} 3\n\
                    weft_cx_total{listener=\"outbound\"} 5\n\
                    weft_cx_total{listener=\"inbound\",a=\"2\"} 4\n\
                    weft_cx_total_other{listener=\"inbound\"} 100\n";
        assert_eq!(metric(text, "weft_cx_total", &["listener=\"inbound\""]), Some(7.0));
        assert_eq!(metric(text, "weft_cx_total", &[]), Some(12.0));
        assert_eq!(metric(text, "weft_cx_total", &["listener=\"gateway\""]), None);
    }
}
