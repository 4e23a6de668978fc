//! The reviews service (Java in the original), in three versions: v1 shows no ratings, v2 asks
//! the ratings service and shows black stars, v3 does the same with red stars.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::warn;

use crate::client::{Client, ErrorChain, Peer, propagated_headers};
use crate::server::{self, Body, HEALTH_PATH, Handler};

/// How long v2 waits for the ratings service, connect included, as the original: 10 s for
/// black stars (v2), 2.5 s for red (v3). There is no retry. (The original's uneven timeouts
/// are what Istio's fault-injection task uncovers.)
pub fn ratings_timeout(version: Version) -> Duration {
    match version {
        Version::V3 => Duration::from_millis(2500),
        Version::V1 | Version::V2 => Duration::from_secs(10),
    }
}

/// The text a review's `rating` carries when the ratings call failed.
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// The two reviews every product gets: (reviewer, text).
pub const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other \
         plays by Shakespeare.",
    ),
];

/// Which reviews service this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// No ratings; never calls the ratings service.
    V1,
    /// Ratings as black stars.
    V2,
    /// Ratings as red stars.
    V3,
}

impl Version {
    /// The name used in flags and in the `version` field: `v1`, `v2` or `v3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// The star colour of this version, `None` for v1 (no ratings).
    pub fn star_color(self) -> Option<&'static str> {
        match self {
            Self::V1 => None,
            Self::V2 => Some("black"),
            Self::V3 => Some("red"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Configuration of a reviews service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which version to behave as (`--version`).
    pub version: Version,
    /// The ratings service (`--ratings`, default `http://ratings:9080`); unused by v1.
    pub ratings: Peer,
    /// The `podname` field of every reply (`--podname`, default `$HOSTNAME`).
    pub podname: String,
    /// The `clustername` field of every reply (`--clustername`, default `$CLUSTER_NAME`).
    pub clustername: String,
    /// How calls to ratings are made (`--proxy`).
    pub client: Client,
}

/// The reply to `GET /reviews/{id}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReviewsReply {
    /// The product id, as a string like the original.
    pub id: String,
    /// Which instance answered.
    pub podname: String,
    /// Which cluster the instance runs in.
    pub clustername: String,
    /// Which version answered (`v1`, `v2`, `v3`).
    pub version: &'static str,
    /// The reviews.
    pub reviews: Vec<Review>,
}

/// One review.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Review {
    /// Who wrote it.
    pub reviewer: &'static str,
    /// What they wrote.
    pub text: &'static str,
    /// Its rating; absent in v1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
}

/// A review's rating: stars, or why there are none.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Rating {
    /// Stars from the ratings service, drawn in `color`.
    Stars {
        /// Number of stars, as the ratings service gave them.
        stars: i64,
        /// `black` (v2) or `red` (v3).
        color: &'static str,
    },
    /// The ratings service failed or did not rate this reviewer.
    Error {
        /// [`RATINGS_UNAVAILABLE`].
        error: &'static str,
    },
}

/// Serves `GET /reviews/{id}` and `GET /health` on `listener` until dropped.
pub async fn serve(listener: TcpListener, config: Config) {
    server::serve("reviews", listener, ReviewsService { config }).await;
}

struct ReviewsService {
    config: Config,
}

#[derive(Deserialize)]
struct RatingsBody {
    ratings: BTreeMap<String, i64>,
}

impl Handler for ReviewsService {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        if path == HEALTH_PATH {
            return server::json(StatusCode::OK, &serde_json::json!({ "status": "Reviews is healthy" }));
        }
        let Some(id) = server::path_id(path, "/reviews/") else {
            return server::not_found();
        };
        if request.method() != Method::GET {
            return server::method_not_allowed();
        }
        let Ok(id) = id else {
            return server::json_error(StatusCode::BAD_REQUEST, "please provide numeric product id");
        };
        let reply = self.reviews(id, request.headers()).await;
        server::json(StatusCode::OK, &reply)
    }
}

impl ReviewsService {
    async fn reviews(&self, id: i64, incoming: &HeaderMap) -> ReviewsReply {
        let config = &self.config;
        let ratings = match config.version.star_color() {
            None => None,
            Some(color) => Some((color, self.ratings(id, incoming).await)),
        };
        let reviews = REVIEWS
            .iter()
            .map(|&(reviewer, text)| {
                let rating =
                    ratings.as_ref().map(
                        |(color, stars)| match stars.as_ref().and_then(|stars| stars.get(reviewer)) {
                            Some(&stars) => Rating::Stars { stars, color },
                            None => Rating::Error {
                                error: RATINGS_UNAVAILABLE,
                            },
                        },
                    );
                Review { reviewer, text, rating }
            })
            .collect();
        ReviewsReply {
            id: id.to_string(),
            podname: config.podname.clone(),
            clustername: config.clustername.clone(),
            version: config.version.as_str(),
            reviews,
        }
    }

    /// Stars per reviewer from the ratings service, `None` if the call failed.
    async fn ratings(&self, id: i64, incoming: &HeaderMap) -> Option<BTreeMap<String, i64>> {
        let peer = &self.config.ratings;
        let path = format!("/ratings/{id}");
        let headers = propagated_headers(incoming);
        let reply = match self
            .config
            .client
            .get(peer, &path, &headers, ratings_timeout(self.config.version))
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                warn!(%peer, error = %ErrorChain(&error), "ratings call failed");
                return None;
            }
        };
        if reply.status != StatusCode::OK {
            warn!(%peer, status = reply.status.as_u16(), "ratings call failed");
            return None;
        }
        match serde_json::from_slice::<RatingsBody>(&reply.body) {
            Ok(body) => Some(body.ratings),
            Err(error) => {
                warn!(%peer, error = %error, "ratings reply is not valid ratings JSON");
                None
            }
        }
    }
}
