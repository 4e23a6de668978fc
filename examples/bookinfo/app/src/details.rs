//! The details service (Ruby in the original): the book's publication details.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::server::{self, Body, HEALTH_PATH, Handler};

/// The book's details, in the field order of the original service.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Details {
    /// The product id asked for.
    pub id: i64,
    /// Always William Shakespeare.
    pub author: &'static str,
    /// Year of publication.
    pub year: u32,
    /// Binding.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Page count.
    pub pages: u32,
    /// Publisher.
    pub publisher: &'static str,
    /// Language.
    pub language: &'static str,
    /// ISBN-10.
    #[serde(rename = "ISBN-10")]
    pub isbn_10: &'static str,
    /// ISBN-13.
    #[serde(rename = "ISBN-13")]
    pub isbn_13: &'static str,
}

impl Details {
    /// The (fixed) details of product `id`.
    pub fn of(id: i64) -> Self {
        Self {
            id,
            author: "William Shakespeare",
            year: 1595,
            kind: "paperback",
            pages: 200,
            publisher: "PublisherA",
            language: "English",
            isbn_10: "1234567890",
            isbn_13: "123-1234567890",
        }
    }
}

/// Serves `GET /details/{id}` and `GET /health` on `listener` until dropped.
pub async fn serve(listener: TcpListener) {
    server::serve("details", listener, DetailsService).await;
}

struct DetailsService;

impl Handler for DetailsService {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        if path == HEALTH_PATH {
            return server::json(StatusCode::OK, &serde_json::json!({ "status": "Details is healthy" }));
        }
        let Some(id) = server::path_id(path, "/details/") else {
            return server::not_found();
        };
        if request.method() != Method::GET {
            return server::method_not_allowed();
        }
        match id {
            Ok(id) => server::json(StatusCode::OK, &Details::of(id)),
            Err(()) => server::json_error(StatusCode::BAD_REQUEST, "please provide numeric product id"),
        }
    }
}
