//! The one rendering of every error as HTTP: the status from the error-code table, a
//! `Retry-After` where the code has one, `WWW-Authenticate` on 401, and the JSON envelope.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::error::{ApiError, ErrorBody};

/// The error-code table's status, as actix's type (it uses `http` 0.2, the table `http` 1).
pub(crate) fn status_of(err: &ApiError) -> StatusCode {
    StatusCode::from_u16(err.code.status().as_u16()).expect("the table holds valid statuses")
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after.or(self.code.retry_after()) {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if self.status_code() == StatusCode::UNAUTHORIZED {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                format!("Bearer error=\"{}\"", self.code.as_str()),
            ));
        }
        response.json(ErrorBody::from(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn overload_renders_with_retry_after() {
        let err = ApiError::new(ErrorCode::Overloaded, "busy");
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}
