//! App API: the gRPC services apps call on the Unix socket and loopback, one module per
//! primitive, plus gRPC health.
//!
//! Each primitive's module has a constructor that takes its own config section and returns its
//! [`AppServices`]: the gRPC services and the names health checks know them by. The server
//! merges them into one router and reports each name in [`health`]. Adding a primitive (log
//! streams, the divider) means adding its domain module, its module here, its config section in
//! `ordo_contract::config`, and one `.merge(...)` line in the server.

pub mod cluster;
pub mod divider;
pub mod health;
pub mod log;
pub mod registers;
pub mod sequencer;
pub mod shutdown;

use std::convert::Infallible;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

type AddRoute = Box<dyn FnOnce(Routes) -> Routes + Send>;

/// The gRPC services a primitive adds to the app API, with their full names (what health
/// checks ask for, e.g. `ordo.v1.Sequencer`).
#[derive(Default)]
pub struct AppServices {
    routes: Vec<AddRoute>,
    names: Vec<&'static str>,
}

impl AppServices {
    /// Adds one gRPC service; health reports it under its full name.
    pub fn with_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<tonic::codegen::http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.push(Box::new(move |routes: Routes| routes.add_service(svc)));
        self
    }

    /// These services and `other`'s.
    pub fn merge(mut self, other: AppServices) -> Self {
        self.routes.extend(other.routes);
        self.names.extend(other.names);
        self
    }

    /// Full names of the services, in the order they were added.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// One router serving every service (clone it for each listener).
    pub fn into_routes(self) -> Routes {
        self.routes.into_iter().fold(Routes::default(), |routes, add| add(routes))
    }
}
