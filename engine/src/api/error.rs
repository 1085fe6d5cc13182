//! Every failure the API can answer with, and its HTTP status.
//!
//! [`ApiError::status`] is one exhaustive `match` down to the variants of
//! the manager's, the image store's and the runtime's errors, with no `_`
//! arm: a new variant does not compile until someone decides its status.

use std::error::Error as _;

use hyper::StatusCode;

use crate::image::pull::PullError;
use crate::image::ImageError;
use crate::manager::ManagerError;
use crate::runtime::RuntimeError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the container manager.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// From the image store, used directly (`/images/...`).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The request is malformed: a bad JSON body, a bad query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// No such route, exec instance, ...
    #[error("{0}")]
    NotFound(String),
    /// The route exists in Docker's API but berth does not implement it.
    #[error("{0}")]
    NotImplemented(String),
    /// The daemon failed on its side (a task panicked, a temp file).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status Docker's API uses for this kind of failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Manager(e) => manager_status(e),
            ApiError::Image(e) => image_status(e),
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The whole message: the error and its sources, joined with ": ".
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut cur = self.source();
        // `transparent` variants have the same text as their source.
        while let Some(s) = cur {
            let t = s.to_string();
            if !text.ends_with(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            cur = s.source();
        }
        text
    }

    /// Docker's exit code for a container that could not start (127: the
    /// command is missing, 126: it cannot be executed), when that is why.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ApiError::Manager(ManagerError::Runtime(e)) => e.exit_code(),
            ApiError::Manager(ManagerError::StartFailed { exit_code, .. }) => *exit_code,
            _ => None,
        }
    }
}

fn manager_status(e: &ManagerError) -> StatusCode {
    match e {
        ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
        ManagerError::NameInUse { .. } => StatusCode::CONFLICT,
        ManagerError::Conflict(_) => StatusCode::CONFLICT,
        ManagerError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ManagerError::ImageNotFound(_) => StatusCode::NOT_FOUND,
        ManagerError::Image(e) => image_status(e),
        ManagerError::Runtime(e) => runtime_status(e),
        ManagerError::Network(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ManagerError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        ManagerError::Monitor(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // A command that is missing or cannot be run is the request's (as
        // dockerd); any other start failure is the daemon's.
        ManagerError::StartFailed { exit_code, .. } => match exit_code {
            Some(_) => StatusCode::BAD_REQUEST,
            None => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

fn image_status(e: &ImageError) -> StatusCode {
    match e {
        // A bad archive is the client's: Docker answers 400 for a bad load.
        ImageError::Import { .. } => StatusCode::BAD_REQUEST,
        ImageError::Blob(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ImageError::Reference(_) => StatusCode::BAD_REQUEST,
        ImageError::Pull(e) => pull_status(e),
        ImageError::NotFound(_) => StatusCode::NOT_FOUND,
        ImageError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
        ImageError::BadName { .. } => StatusCode::BAD_REQUEST,
        ImageError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        ImageError::CorruptIndex { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        ImageError::CorruptImage { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        ImageError::MissingLayer { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn pull_status(e: &PullError) -> StatusCode {
    match e {
        // The registry does not have it: Docker's "manifest unknown" 404.
        PullError::Status { status: 404, .. } => StatusCode::NOT_FOUND,
        PullError::Status { .. } => StatusCode::BAD_GATEWAY,
        PullError::Transport { .. } => StatusCode::BAD_GATEWAY,
        PullError::Read { .. } => StatusCode::BAD_GATEWAY,
        PullError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
        PullError::Auth { .. } => StatusCode::UNAUTHORIZED,
        PullError::NoPlatform { .. } => StatusCode::NOT_FOUND,
        PullError::Unsupported { .. } => StatusCode::BAD_REQUEST,
        PullError::Ca { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        PullError::Blob(_) => StatusCode::INTERNAL_SERVER_ERROR,
        PullError::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        PullError::Cancelled => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn runtime_status(e: &RuntimeError) -> StatusCode {
    match e {
        // A spec the runtime refuses (bad user, path, limit) is the request's.
        RuntimeError::Spec(_) => StatusCode::BAD_REQUEST,
        RuntimeError::Rootfs { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeError::StateDir { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        // Limits asked for that this host cannot enforce.
        RuntimeError::NoCgroup { .. } => StatusCode::BAD_REQUEST,
        RuntimeError::Cgroup { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeError::Namespace { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeError::Sys { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeError::Channel { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        // dockerd answers 400 when the command cannot be run, and the
        // message says why (not found, permission denied).
        RuntimeError::Child { .. } => StatusCode::BAD_REQUEST,
        RuntimeError::ChildVanished { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeError::NotRunning { .. } => StatusCode::CONFLICT,
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        ApiError::Manager(ManagerError::Runtime(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_docker() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ManagerError::NotFound("x".into()).into(), 404),
            (ManagerError::ImageNotFound("busybox".into()).into(), 404),
            (
                ManagerError::NameInUse {
                    name: "web".into(),
                    id: "abc".into(),
                }
                .into(),
                409,
            ),
            (ManagerError::Conflict("running".into()).into(), 409),
            (ManagerError::InvalidArgument("bad".into()).into(), 400),
            (ManagerError::Network("no bridge".into()).into(), 500),
            (ImageError::NotFound("nope".into()).into(), 404),
            (
                ManagerError::Image(ImageError::NotFound("nope".into())).into(),
                404,
            ),
            (RuntimeError::NotRunning { id: "abc".into() }.into(), 409),
            (ApiError::BadRequest("bad json".into()), 400),
            (ApiError::NotImplemented("pull".into()), 501),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e}");
        }
    }

    #[test]
    fn message_joins_sources_once() {
        let e = ApiError::from(ImageError::NotFound("busybox:9".into()));
        assert_eq!(e.message(), "no such image: busybox:9");
        let io = ImageError::Io {
            action: "read",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        let m = ApiError::from(io).message();
        assert!(m.starts_with("cannot read /x: No such file"), "{m}");
    }
}
