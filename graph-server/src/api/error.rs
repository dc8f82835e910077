//! The one error type handlers return; it becomes a JSON response.
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query or path parameter could not be used.
    #[error("invalid parameter `{name}`: {reason}")]
    BadParameter { name: &'static str, reason: String },
    /// A query parameter this endpoint does not know (likely a typo).
    #[error("unknown parameter `{0}`")]
    UnknownParameter(String),
    /// The query string itself was not decodable.
    #[error("invalid query string: {0}")]
    BadQuery(String),
    /// Nothing by that id.
    #[error("{0}")]
    NotFound(String),
    /// The bearer token was missing or wrong.
    #[error("missing or wrong bearer token")]
    Unauthorized,
}

impl AppError {
    pub fn bad(name: &'static str, reason: impl Into<String>) -> Self {
        Self::BadParameter {
            name,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadParameter { .. } | Self::UnknownParameter(_) | Self::BadQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
        };
        let body = Json(json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}
