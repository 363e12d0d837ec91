//! The one place Redfish answers become errors: each failure is an HTTP status plus a DMTF
//! Base registry message in the `error` object's `@Message.ExtendedInfo`, as clients expect.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use vmedia_boot::BootError;

/// The Base message registry version the message ids name (present in DMTF's 2025.4 bundle).
pub const BASE_REGISTRY: &str = "Base.1.18";

/// Why a Redfish request failed.
#[derive(Debug)]
pub enum RedfishError {
    /// No resource at this URI.
    NotFound(String),
    /// No or bad credentials.
    NoValidSession,
    /// A login with a wrong user name or password.
    LoginFailed,
    /// The caller's role may not do this.
    InsufficientPrivilege,
    /// The body is not JSON (or not an object).
    MalformedJson(String),
    /// A property the resource does not have or that cannot be written.
    PropertyUnknown(String),
    PropertyNotWritable(String),
    /// A property value outside its allowed set.
    PropertyValueNotInList {
        property: String,
        value: String,
    },
    ActionParameterMissing {
        action: String,
        parameter: String,
    },
    ActionParameterValueNotInList {
        action: String,
        parameter: String,
        value: String,
    },
    /// A parameter value of the right type the service cannot use, with the reason.
    ActionParameterValueError {
        action: String,
        parameter: String,
        reason: String,
    },
    /// If-Match named another version of the resource.
    PreconditionFailed,
    /// The VM store or QEMU refused.
    Boot(BootError),
    /// A blocking job ended abnormally.
    Internal(String),
}

impl From<BootError> for RedfishError {
    fn from(error: BootError) -> Self {
        RedfishError::Boot(error)
    }
}

/// A Base registry message object.
fn message(id: &str, text: &str, args: &[&str], severity: &str, resolution: &str) -> Value {
    json!({
        "@odata.type": "#Message.v1_1_0.Message",
        "MessageId": format!("{BASE_REGISTRY}.{id}"),
        "Message": text,
        "MessageArgs": args,
        "MessageSeverity": severity,
        "Resolution": resolution,
    })
}

impl RedfishError {
    /// Status, Base message id, text, message arguments and resolution.
    fn parts(&self) -> (StatusCode, &'static str, String, Vec<String>, String) {
        use RedfishError::*;
        match self {
            NotFound(uri) => (
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!("The requested resource of type Resource named '{uri}' was not found."),
                vec!["Resource".into(), uri.clone()],
                "Provide a valid resource identifier and resubmit the request.".into(),
            ),
            NoValidSession => (
                StatusCode::UNAUTHORIZED,
                "NoValidSession",
                "There is no valid session established with the implementation.".into(),
                vec![],
                "Establish a session (SessionService) or send HTTP Basic credentials.".into(),
            ),
            LoginFailed => (
                StatusCode::UNAUTHORIZED,
                "ResourceAtUriUnauthorized",
                "While accessing the resource at '/redfish/v1/SessionService/Sessions', the service received an authorization error 'wrong user name or password'.".into(),
                vec!["/redfish/v1/SessionService/Sessions".into(), "wrong user name or password".into()],
                "Check the user name and password and resubmit the request.".into(),
            ),
            InsufficientPrivilege => (
                StatusCode::FORBIDDEN,
                "InsufficientPrivilege",
                "There are insufficient privileges for the account or credentials associated with the current session to perform the requested operation.".into(),
                vec![],
                "Either abandon the operation or change the associated access rights and resubmit the request if the operation failed.".into(),
            ),
            MalformedJson(why) => (
                StatusCode::BAD_REQUEST,
                "MalformedJSON",
                format!("The request body submitted was malformed JSON and could not be parsed by the receiving service: {why}"),
                vec![],
                "Ensure that the request body is valid JSON and resubmit the request.".into(),
            ),
            PropertyUnknown(p) => (
                StatusCode::BAD_REQUEST,
                "PropertyUnknown",
                format!("The property {p} is not in the list of valid properties for the resource."),
                vec![p.clone()],
                "Remove the unknown property from the request body and resubmit the request if the operation failed.".into(),
            ),
            PropertyNotWritable(p) => (
                StatusCode::BAD_REQUEST,
                "PropertyNotWritable",
                format!("The property {p} is a read only property and cannot be assigned a value."),
                vec![p.clone()],
                "Remove the property from the request body and resubmit the request if the operation failed.".into(),
            ),
            PropertyValueNotInList { property, value } => (
                StatusCode::BAD_REQUEST,
                "PropertyValueNotInList",
                format!("The value '{value}' for the property {property} is not in the list of acceptable values."),
                vec![value.clone(), property.clone()],
                "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.".into(),
            ),
            ActionParameterMissing { action, parameter } => (
                StatusCode::BAD_REQUEST,
                "ActionParameterMissing",
                format!("The action {action} requires the parameter {parameter} to be present in the request body."),
                vec![action.clone(), parameter.clone()],
                "Supply the action with the required parameter in the request body when the request is resubmitted.".into(),
            ),
            ActionParameterValueNotInList { action, parameter, value } => (
                StatusCode::BAD_REQUEST,
                "ActionParameterValueNotInList",
                format!("The value '{value}' for the parameter {parameter} in the action {action} is not in the list of acceptable values."),
                vec![value.clone(), parameter.clone(), action.clone()],
                "Choose a value from the enumeration list and resubmit the request if the operation failed.".into(),
            ),
            ActionParameterValueError { action, parameter, reason } => (
                StatusCode::BAD_REQUEST,
                "ActionParameterValueError",
                format!("The value for the parameter {parameter} in the action {action} is invalid: {reason}"),
                vec![parameter.clone(), action.clone()],
                "Correct the value for the parameter in the request body and resubmit the request if the operation failed.".into(),
            ),
            PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "The ETag supplied did not match the ETag required to change this resource.".into(),
                vec![],
                "Try the operation again using the appropriate ETag.".into(),
            ),
            Boot(error) => {
                let status = crate::http::boot_status(error);
                (
                    status,
                    if status == StatusCode::CONFLICT { "ResourceInUse" } else { "GeneralError" },
                    error.to_string(),
                    vec![],
                    "Correct the request or the VM's state and resubmit it.".into(),
                )
            }
            Internal(why) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("The request failed due to an internal service error: {why}"),
                vec![],
                "Resubmit the request. If the problem persists, consider resetting the service.".into(),
            ),
        }
    }
}

impl IntoResponse for RedfishError {
    fn into_response(self) -> Response {
        let (status, id, text, args, resolution) = self.parts();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let severity = if status.is_server_error() {
            "Critical"
        } else {
            "Warning"
        };
        let body = json!({
            "error": {
                "code": format!("{BASE_REGISTRY}.{id}"),
                "message": text,
                "@Message.ExtendedInfo": [message(id, &text, &args, severity, &resolution)],
            }
        });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"vmedia Redfish\""),
            );
        }
        response
    }
}
