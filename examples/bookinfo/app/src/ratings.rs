//! The ratings service (Node.js in the original): every product is rated 5 by Reviewer1 and 4
//! by Reviewer2.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::server::{self, Body, HEALTH_PATH, Handler};

/// The ratings of one product, `{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ratings {
    /// The product id asked for.
    pub id: i64,
    /// Stars per reviewer.
    pub ratings: ReviewerStars,
}

/// Stars given by each of the two reviewers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReviewerStars {
    /// Reviewer1's stars.
    #[serde(rename = "Reviewer1")]
    pub reviewer1: u8,
    /// Reviewer2's stars.
    #[serde(rename = "Reviewer2")]
    pub reviewer2: u8,
}

impl Ratings {
    /// The (fixed) ratings of product `id`.
    pub fn of(id: i64) -> Self {
        Self {
            id,
            ratings: ReviewerStars {
                reviewer1: 5,
                reviewer2: 4,
            },
        }
    }
}

/// Serves `GET /ratings/{id}` and `GET /health` on `listener` until dropped.
pub async fn serve(listener: TcpListener) {
    server::serve("ratings", listener, RatingsService).await;
}

struct RatingsService;

impl Handler for RatingsService {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        if path == HEALTH_PATH {
            return server::json(StatusCode::OK, &serde_json::json!({ "status": "Ratings is healthy" }));
        }
        let Some(id) = server::path_id(path, "/ratings/") else {
            return server::not_found();
        };
        if request.method() != Method::GET {
            return server::method_not_allowed();
        }
        match id {
            Ok(id) => server::json(StatusCode::OK, &Ratings::of(id)),
            Err(()) => server::json_error(StatusCode::BAD_REQUEST, "please provide numeric product ID"),
        }
    }
}
