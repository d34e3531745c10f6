//! Error bodies in the shape of each API the stand-in plays: compatible mode
//! (`{"error": {...}, "request_id"}`), DashScope native (`{"code", "message", "request_id"}`)
//! and OpenSearch (`{"request_id", "latency", "code", "message"}`).

use crate::request::Outcome;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Api {
    Compatible,
    Native,
    OpenSearch,
}

/// DashScope's native answer (400 InvalidParameter) for a model name it does not know: a
/// guess, commonly reported, not documented.
pub(crate) const UNKNOWN_MODEL: &str = "Model not exist.";

pub(crate) fn request_id(id: u64) -> String {
    format!("standin-{id}")
}

/// The compatible-mode error body.
pub(crate) fn error_body(message: &str, kind: &str, code: &str, param: Option<&str>, id: u64) -> Value {
    json!({
        "error": {"message": message, "type": kind, "param": param, "code": code},
        "request_id": request_id(id),
    })
}

/// A native or OpenSearch error body (compatible mode has its own, above).
pub(crate) fn coded_body(api: Api, code: &str, message: &str, id: u64) -> Value {
    match api {
        Api::OpenSearch => {
            json!({"request_id": request_id(id), "latency": 0, "code": code, "message": message})
        }
        _ => json!({"code": code, "message": message, "request_id": request_id(id)}),
    }
}

pub(crate) fn respond(status: u16, body: Value) -> Outcome {
    Outcome::Respond { status, body, retry_after: None }
}

/// 400 for a parameter the API refuses, in its shape: `invalid_parameter_error` in compatible
/// mode, `InvalidParameter` in the others (error-code pages of both products).
pub(crate) fn invalid(api: Api, message: &str, id: u64) -> Outcome {
    match api {
        Api::Compatible => {
            respond(400, error_body(message, "invalid_request_error", "invalid_parameter_error", None, id))
        }
        _ => respond(400, coded_body(api, "InvalidParameter", message, id)),
    }
}

/// A compatible-mode refusal with a status and code of its own (the file and batch APIs'),
/// type `invalid_request_error` as OpenAI's are.
pub(crate) fn refuse(status: u16, code: &str, message: &str, id: u64) -> Outcome {
    respond(status, error_body(message, "invalid_request_error", code, None, id))
}

/// 404 for a path the stand-in does not serve (or does not serve on this host), in the
/// compatible-mode shape.
pub(crate) fn no_such_path(id: u64) -> Value {
    error_body("Not found", "invalid_request_error", "NotFound", None, id)
}

/// 400 data inspection (content moderation) in each shape.
pub(crate) fn inspection(api: Api, id: u64) -> Value {
    let message = "Input data may contain inappropriate content.";
    match api {
        Api::Compatible => error_body(message, "data_inspection_failed", "data_inspection_failed", None, id),
        // OpenSearch documents no moderation error; csi_level exists, so it has one. The
        // DashScope code is the best guess for its shape.
        _ => coded_body(api, "DataInspectionFailed", message, id),
    }
}

/// The realistic body for an error status (faults, the request limits, unavailable models).
/// A 429 is the request limit's (RPM/RPS, error-code page): `limit_requests` in compatible
/// mode, `Throttling.RateQuota` in the native and OpenSearch shapes.
pub(crate) fn status_error(api: Api, status: u16, id: u64, model: &str) -> Value {
    match api {
        Api::Compatible => compatible_status(status, id, model),
        Api::Native => {
            let (code, message) = match status {
                400 => (
                    "InvalidParameter",
                    "Required parameter(s) missing or invalid, please check the request parameters.",
                ),
                401 => ("InvalidApiKey", "Invalid API-key provided."),
                403 => ("AccessDenied", "Access denied."),
                404 => ("ModelNotFound", "Model can not be found."),
                408 => ("RequestTimeOut", "Request timed out, please try again later."),
                413 => ("BadRequest.TooLarge", "Payload Too Large"),
                429 => ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
                503 => ("ServiceUnavailable", "The service is temporarily unavailable."),
                s if s >= 500 => (
                    "InternalError",
                    "An internal error has occured, please try again later or contact service support.",
                ),
                _ => ("BadRequest", "The request failed."),
            };
            coded_body(api, code, message, id)
        }
        Api::OpenSearch => {
            // The status-code page lists 400, 429 and 500; the rest follow its naming.
            let (code, message) = match status {
                400 => (
                    "InvalidParameter",
                    "Required parameter(s) missing or invalid, please check the request parameters.",
                ),
                401 => ("Unauthorized", "Invalid API key provided."),
                403 => ("Forbidden", "Access denied."),
                404 => ("ServiceIdNotExist", "service_id is not exist."),
                429 => ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
                503 => ("ServiceUnavailable", "The service is temporarily unavailable."),
                s if s >= 500 => (
                    "InternalServerError",
                    "An internal error has occured, please try again later or contact service support.",
                ),
                _ => ("BadRequest", "The request failed."),
            };
            coded_body(api, code, message, id)
        }
    }
}

fn compatible_status(status: u16, id: u64, model: &str) -> Value {
    match status {
        400 => error_body(
            "<400> InternalError.Algo.InvalidParameter: The request is invalid.",
            "invalid_request_error",
            "invalid_parameter_error",
            None,
            id,
        ),
        401 => {
            error_body("Incorrect API key provided. ", "invalid_request_error", "invalid_api_key", None, id)
        }
        403 => error_body("Access denied.", "invalid_request_error", "access_denied", None, id),
        404 => error_body(
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            "model_not_found",
            None,
            id,
        ),
        429 => error_body(
            "Requests rate limit exceeded, please try again later.",
            "limit_requests",
            "limit_requests",
            None,
            id,
        ),
        503 => error_body(
            "The service is temporarily unavailable.",
            "server_error",
            "ServiceUnavailable",
            None,
            id,
        ),
        s if s >= 500 => error_body(
            "An internal error has occured, please try again later.",
            "internal_error",
            "internal_error",
            None,
            id,
        ),
        _ => error_body("The request failed.", "invalid_request_error", "invalid_request_error", None, id),
    }
}

/// 429 for a request over the tokens-per-minute (or per-second) limit: the error-code page
/// (research §2.3, S7) names it `Throttling.AllocationQuota`, "Allocated quota exceeded,
/// please increase your quota limit.", and in compatible mode `insufficient_quota`, "You
/// exceeded your current quota, please check your plan and billing details." (TPM, despite
/// the name, not billing). The compatible envelope's `type` repeats the code, as the captured
/// `limit_requests` 429 does. OpenSearch documents a QPS limit only (seed 003); its token
/// refusal takes the native code in its own shape, a guess.
pub(crate) fn quota_exceeded(api: Api, id: u64) -> Value {
    match api {
        Api::Compatible => error_body(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
            None,
            id,
        ),
        _ => coded_body(
            api,
            "Throttling.AllocationQuota",
            "Allocated quota exceeded, please increase your quota limit.",
            id,
        ),
    }
}

/// 401 for a key the API does not take.
pub(crate) fn unauthorized(api: Api, key: &str, echo_key: bool, id: u64) -> Outcome {
    match api {
        Api::Compatible => {
            let message = if echo_key {
                format!("Incorrect API key provided: {key}. You can find your API key in the console.")
            } else {
                "Incorrect API key provided. ".to_string()
            };
            respond(401, error_body(&message, "invalid_request_error", "invalid_api_key", None, id))
        }
        _ => {
            let mut body = status_error(api, 401, id, "");
            if echo_key {
                body["message"] = format!("Invalid API-key provided: {key}.").into();
            }
            respond(401, body)
        }
    }
}

/// Status-code page: 400 BadRequest.EmptyInput, the native APIs' answer to a body without
/// `input`.
pub(crate) fn empty_input(id: u64) -> crate::request::Outcome {
    respond(
        400,
        coded_body(
            Api::Native,
            "BadRequest.EmptyInput",
            "Required input parameter missing from request.",
            id,
        ),
    )
}
