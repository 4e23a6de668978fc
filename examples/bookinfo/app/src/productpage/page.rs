//! The HTML of the index and the product page. Every value that came from a request or a peer
//! is escaped.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{DETAILS_ERROR, Product, REVIEWS_ERROR};

/// The reviews service's reply, read leniently: only `reviews` is required.
#[derive(Debug, Deserialize)]
pub(super) struct ReviewsBody {
    #[serde(default)]
    podname: Option<String>,
    #[serde(default)]
    clustername: Option<String>,
    #[serde(default)]
    version: Option<String>,
    reviews: Vec<ReviewBody>,
}

#[derive(Debug, Deserialize)]
struct ReviewBody {
    #[serde(default)]
    reviewer: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    rating: Option<RatingBody>,
}

#[derive(Debug, Deserialize)]
struct RatingBody {
    #[serde(default)]
    stars: Option<i64>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// What the product page shows; `None` for a call that failed.
pub(super) struct Model<'a> {
    pub(super) user: Option<&'a str>,
    pub(super) product: &'a Product,
    pub(super) details: Option<&'a Map<String, Value>>,
    pub(super) reviews: Option<&'a ReviewsBody>,
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222}\
nav{background:#2d2d2d;color:#ddd;padding:.6em 1.2em;display:flex;justify-content:space-between}\
nav a{color:#fff;text-decoration:none}main{max-width:60em;margin:0 auto;padding:1em}\
h3,h4{text-align:center;color:#337ab7}.columns{display:flex;gap:2em}.columns>section{flex:1}\
td,th{text-align:left;padding:.15em .8em .15em 0}blockquote{border-left:4px solid #ddd;\
margin:1em 0;padding:.2em 1em}blockquote small{display:block;color:#777}";

fn head(out: &mut String) {
    out.push_str("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>Simple Bookstore App</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n");
}

/// `GET /`: a welcome text with a link to the product page.
pub(super) fn index() -> String {
    let mut out = String::new();
    head(&mut out);
    out.push_str(
        "<nav><a href=\"/\">BookInfo Sample</a></nav>\n<main>\n\
         <h3>Hello! This is a simple bookstore application.</h3>\n\
         <p>It is made of four services: <b>productpage</b> shows the page and calls \
         <b>details</b> for the book's details and <b>reviews</b> for its reviews; reviews \
         v2 and v3 call <b>ratings</b> for the stars.</p>\n\
         <p><a href=\"/productpage\">Go to the product page</a></p>\n</main>\n</body>\n</html>\n",
    );
    out
}

/// `GET /productpage`.
pub(super) fn product_page(model: &Model<'_>) -> String {
    let mut out = String::new();
    head(&mut out);
    nav(&mut out, model.user);
    if let Some(reviews) = model.reviews {
        // For tests and demos: which reviews instance served this page.
        let _ = writeln!(
            out,
            "<!-- reviews: version={} podname={} clustername={} -->",
            escape(reviews.version.as_deref().unwrap_or("unknown")),
            escape(reviews.podname.as_deref().unwrap_or("unknown")),
            escape(reviews.clustername.as_deref().unwrap_or("unknown")),
        );
    }
    let _ = writeln!(out, "<main>\n<h3>{}</h3>", escape(model.product.title));
    // The description is our own constant HTML.
    let _ = writeln!(out, "<p>Summary: {}</p>", model.product.description_html);
    out.push_str("<div class=\"columns\">\n");
    details(&mut out, model.details);
    reviews(&mut out, model.reviews);
    out.push_str("</div>\n</main>\n</body>\n</html>\n");
    out
}

fn nav(out: &mut String, user: Option<&str>) {
    out.push_str("<nav><a href=\"/\">BookInfo Sample</a>\n");
    match user {
        Some(user) => {
            let _ = writeln!(
                out,
                "<span class=\"user\">signed in as <b>{}</b> (<a href=\"/logout\">sign out</a>)</span>",
                escape(user)
            );
        }
        None => out.push_str(
            "<form method=\"post\" action=\"/login\">\
             <input type=\"text\" name=\"username\" placeholder=\"User Name\"> \
             <input type=\"password\" name=\"passwd\" placeholder=\"Password\"> \
             <button type=\"submit\">Sign in</button></form>\n",
        ),
    }
    out.push_str("</nav>\n");
}

const DETAIL_ROWS: [(&str, &str); 8] = [
    ("Author", "author"),
    ("Year", "year"),
    ("Type", "type"),
    ("Pages", "pages"),
    ("Publisher", "publisher"),
    ("Language", "language"),
    ("ISBN-10", "ISBN-10"),
    ("ISBN-13", "ISBN-13"),
];

fn details(out: &mut String, details: Option<&Map<String, Value>>) {
    out.push_str("<section class=\"details\">\n");
    let Some(details) = details else {
        out.push_str("<h4>Error fetching product details!</h4>\n");
        let _ = writeln!(out, "<p>{DETAILS_ERROR}</p>\n</section>");
        return;
    };
    out.push_str("<h4>Book Details</h4>\n<table>\n");
    for (label, key) in DETAIL_ROWS {
        let value = match details.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => escape(s),
            Some(other) => escape(&other.to_string()),
        };
        let _ = writeln!(out, "<tr><th>{label}:</th><td>{value}</td></tr>");
    }
    out.push_str("</table>\n</section>\n");
}

fn reviews(out: &mut String, reviews: Option<&ReviewsBody>) {
    out.push_str("<section class=\"reviews\">\n");
    let Some(reviews) = reviews else {
        out.push_str("<h4>Error fetching product reviews!</h4>\n");
        let _ = writeln!(out, "<p>{REVIEWS_ERROR}</p>\n</section>");
        return;
    };
    out.push_str("<h4>Book Reviews</h4>\n");
    for review in &reviews.reviews {
        let _ = write!(
            out,
            "<blockquote>\n<p>{}</p>\n<small>{}</small>\n",
            escape(&review.text),
            escape(&review.reviewer)
        );
        if let Some(rating) = &review.rating {
            if let Some(stars) = rating.stars {
                let filled = usize::try_from(stars.clamp(0, 5)).unwrap_or(0);
                let color = rating.color.as_deref().unwrap_or("black");
                let _ = writeln!(
                    out,
                    "<font color=\"{}\">{}{}</font>",
                    escape(color),
                    "★".repeat(filled),
                    "☆".repeat(5 - filled)
                );
            } else if let Some(error) = &rating.error {
                let _ = writeln!(out, "<p><i>{}</i></p>", escape(error));
            }
        }
        out.push_str("</blockquote>\n");
    }
    if let Some(podname) = &reviews.podname {
        let _ = writeln!(out, "<p>Reviews served by: <u>{}</u></p>", escape(podname));
    }
    out.push_str("</section>\n");
}

/// Escapes text for HTML element content, attribute values and comments.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(reviews: &str, user: Option<&str>) -> String {
        let reviews: ReviewsBody = serde_json::from_str(reviews).expect("reviews JSON");
        let details = serde_json::json!({"type": "paperback", "pages": 200});
        product_page(&Model {
            user,
            product: &super::super::product(),
            details: details.as_object(),
            reviews: Some(&reviews),
        })
    }

    #[test]
    fn stars_are_filled_up_to_five() {
        let html = page(
            r#"{"version":"v3","podname":"p","reviews":[
                {"reviewer":"R1","text":"t1","rating":{"stars":4,"color":"red"}},
                {"reviewer":"R2","text":"t2","rating":{"stars":9,"color":"red"}},
                {"reviewer":"R3","text":"t3","rating":{"error":"Ratings service is currently unavailable"}}]}"#,
            None,
        );
        assert!(html.contains("<font color=\"red\">★★★★☆</font>"), "{html}");
        assert!(html.contains("<font color=\"red\">★★★★★</font>"), "{html}");
        assert!(html.contains("<p><i>Ratings service is currently unavailable</i></p>"));
        assert!(html.contains("<!-- reviews: version=v3 podname=p clustername=unknown -->"));
        assert!(html.contains("<td>paperback</td>") && html.contains("<td>200</td>"));
    }

    #[test]
    fn peer_and_user_text_is_escaped() {
        let html = page(
            r#"{"podname":"--><script>","reviews":[{"reviewer":"<b>","text":"a&b"}]}"#,
            Some("o'neil"),
        );
        assert!(!html.contains("<script>") && !html.contains("<b><"));
        assert!(html.contains("podname=--&gt;&lt;script&gt;"));
        assert!(html.contains("a&amp;b") && html.contains("o&#39;neil"));
        assert!(!html.contains('★'));
    }
}
