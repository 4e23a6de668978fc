//! The JSON access log line, after Istio's JSON access log format (`accessLogEncoding: JSON`).

use serde::Serialize;

/// One request's access log entry. Fields the proxy could not fill are `null`, as in Envoy's
/// JSON access logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccessLogEntry<'a> {
    /// When the request started, RFC 3339 in UTC with milliseconds.
    pub start_time: Option<String>,
    /// Request method.
    pub method: Option<&'a str>,
    /// Path and query as received.
    pub path: Option<&'a str>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: Option<&'a str>,
    /// Status sent downstream (0: none).
    pub response_code: u16,
    /// Envoy response flags (`-` when none).
    pub response_flags: &'a str,
    /// `via_upstream` or the proxy's local-reply reason.
    pub response_code_details: Option<&'a str>,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes sent downstream.
    pub bytes_sent: u64,
    /// Milliseconds from the request's start to the end of the response.
    pub duration_ms: u64,
    /// The endpoint that answered (`ip:port`).
    pub upstream_host: Option<&'a str>,
    /// The cluster the request went to.
    pub upstream_cluster: Option<&'a str>,
    /// The request's `x-forwarded-for` (the proxy has appended the client).
    pub x_forwarded_for: Option<&'a str>,
    /// The request's `user-agent`.
    pub user_agent: Option<&'a str>,
    /// The request's `x-request-id`.
    pub request_id: Option<&'a str>,
    /// The request's authority.
    pub authority: Option<&'a str>,
    /// The route the request matched.
    pub route_name: Option<&'a str>,
    /// The downstream peer (`ip:port`).
    pub downstream_remote_address: Option<&'a str>,
    /// The local address the request arrived on (`ip:port`).
    pub downstream_local_address: Option<&'a str>,
}

impl AccessLogEntry<'_> {
    /// The entry as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// `ns` nanoseconds since the Unix epoch as RFC 3339 in UTC with milliseconds, as Envoy
/// writes `%START_TIME%`: `2026-11-26T09:15:39.123Z`. Negative times clamp to the epoch.
pub fn rfc3339_millis(ns: i64) -> String {
    let ms = ns.max(0) / 1_000_000;
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01 (`days` ≥ 0).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01, so the leap day ends each 4/100/400-year cycle.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097; // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_868_799_999_999_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_millis(1_709_251_199_123_456_789), "2024-02-29T23:59:59.123Z");
        assert_eq!(rfc3339_millis(1_798_761_600_000_000_000), "2027-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(4_107_542_400_000_000_000), "2100-03-01T00:00:00.000Z");
        // Every day boundary for 1,000 years round-trips through a naive day counter.
        let (mut year, mut month, mut day) = (1970i64, 1u32, 1u32);
        for days in 0..366 * 1000 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let length = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > length {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
    }

    #[test]
    fn entries_are_one_line_of_json_with_nulls_for_unknowns() {
        let entry = AccessLogEntry {
            start_time: Some(rfc3339_millis(1_709_251_199_123_456_789)),
            method: Some("GET"),
            path: Some("/a?\"quoted\"\n"),
            protocol: Some("HTTP/1.1"),
            response_code: 503,
            response_flags: "UH",
            response_code_details: Some("no_healthy_upstream"),
            bytes_received: 12,
            bytes_sent: 20,
            duration_ms: 7,
            upstream_cluster: Some("reviews"),
            user_agent: Some("curl/8"),
            request_id: Some("rid-1"),
            authority: Some("reviews:9080"),
            route_name: Some("default"),
            downstream_remote_address: Some("10.0.0.1:5555"),
            ..Default::default()
        };
        let line = entry.to_json_line();
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["start_time"], "2024-02-29T23:59:59.123Z");
        assert_eq!(value["path"], "/a?\"quoted\"\n");
        assert_eq!(value["response_code"], 503);
        assert_eq!(value["response_flags"], "UH");
        assert_eq!(value["bytes_received"], 12);
        assert_eq!(value["bytes_sent"], 20);
        assert_eq!(value["duration_ms"], 7);
        assert_eq!(value["upstream_host"], serde_json::Value::Null);
        assert_eq!(value["upstream_cluster"], "reviews");
        assert_eq!(value["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(value["authority"], "reviews:9080");
        let keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 19, "{keys:?}");
        assert!(
            line.starts_with("{\"start_time\":\"2024-02-29T23:59:59.123Z\",\"method\":\"GET\","),
            "{line}"
        );
    }
}
