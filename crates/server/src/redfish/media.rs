//! Virtual media under Systems/{id} and Managers/{id}: `Cd` is the VM's first CD slot,
//! `Floppy` a drive q35 VMs do not have (listed, never connected, no actions). InsertMedia
//! takes an http(s) or nbd:// URL that QEMU reads itself: nothing is downloaded first.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Extension;
use axum::Json;
use serde_json::{json, Value};
use vmedia_boot::managed::MediumLogin;
use vmedia_boot::remote::{Medium, Remote, RemoteUrl};

use super::resources::collection_body;
use super::systems::{load_vm, Vm, MANAGERS, SYSTEMS};
use super::{object_body, MediaAccess, RedfishError, Shared};
use crate::api::access::item_of_spec;
use crate::audit::Outcome;
use crate::auth::Principal;
use crate::http::Peer;

/// The CD slot Redfish's `Cd` device is.
const CD_SLOT: usize = 0;
const INSERT: &str = "VirtualMedia.InsertMedia";
const EJECT: &str = "VirtualMedia.EjectMedia";

/// `/redfish/v1/{Systems|Managers}/{id}` for a request under either.
fn base(request: &Uri, id: &str) -> Result<String, RedfishError> {
    let path = request.path();
    if path.starts_with(&format!("{SYSTEMS}/")) {
        Ok(format!("{SYSTEMS}/{id}"))
    } else if path.starts_with(&format!("{MANAGERS}/")) {
        Ok(format!("{MANAGERS}/{id}"))
    } else {
        Err(RedfishError::NotFound(path.to_string()))
    }
}

fn is_device(device: &str) -> bool {
    matches!(device, "Cd" | "Floppy")
}

async fn vm(service: &Shared, id: &str, uri: &str) -> Result<Vm, RedfishError> {
    let (id, uri) = (id.to_string(), uri.to_string());
    service
        .blocking(move |store, _| load_vm(store, &id, &uri))
        .await
}

pub(crate) async fn collection(
    State(service): State<Shared>,
    request: Uri,
    Path(id): Path<String>,
) -> Result<Json<Value>, RedfishError> {
    let base = base(&request, &id)?;
    let uri = format!("{base}/VirtualMedia");
    vm(&service, &id, &uri).await?;
    Ok(Json(collection_body(
        "VirtualMediaCollection",
        &uri,
        "Virtual Media",
        ["Cd", "Floppy"]
            .iter()
            .map(|d| format!("{base}/VirtualMedia/{d}")),
    )))
}

/// What the protocol type of a medium is called in Redfish.
fn protocol(medium: &Medium) -> Option<&'static str> {
    match medium {
        Medium::File(_) => None,
        Medium::Remote(Remote { url, .. }) => Some(match url {
            RemoteUrl::Http { secure: true, .. } => "HTTPS",
            RemoteUrl::Http { secure: false, .. } => "HTTP",
            RemoteUrl::Nbd { .. } => "OEM",
        }),
    }
}

fn image_uri(medium: &Medium) -> String {
    match medium {
        Medium::File(path) => format!("file://{}", path.display()),
        // A signed URL is a capability: readers see the URL without it.
        Medium::Remote(remote) => crate::http::gate::without_capability(&remote.url.to_string()),
    }
}

pub(crate) async fn resource(
    State(service): State<Shared>,
    request: Uri,
    Path((id, device)): Path<(String, String)>,
) -> Result<Json<Value>, RedfishError> {
    let base = base(&request, &id)?;
    let uri = format!("{base}/VirtualMedia/{device}");
    if !is_device(&device) {
        return Err(RedfishError::NotFound(uri));
    }
    let vm = vm(&service, &id, &uri).await?;
    let mut body = json!({
        "@odata.type": "#VirtualMedia.v1_3_0.VirtualMedia",
        "@odata.id": uri,
        "Id": device,
        "WriteProtected": true,
    });
    if device == "Floppy" {
        body["Name"] = json!("Virtual floppy (none on this machine type)");
        body["MediaTypes"] = json!(["Floppy", "USBStick"]);
        body["Image"] = Value::Null;
        body["Inserted"] = json!(false);
        body["ConnectedVia"] = json!("NotConnected");
        return Ok(Json(body));
    }
    let medium = vm
        .config
        .spec
        .cdroms
        .get(CD_SLOT)
        .and_then(|slot| slot.medium.clone());
    body["Name"] = json!("Virtual CD");
    body["MediaTypes"] = json!(["CD", "DVD"]);
    body["Inserted"] = json!(medium.is_some());
    body["ConnectedVia"] = json!(if medium.is_some() {
        "URI"
    } else {
        "NotConnected"
    });
    body["Image"] = medium.as_ref().map_or(Value::Null, |m| json!(image_uri(m)));
    body["ImageName"] = medium.as_ref().map_or(Value::Null, |m| {
        let text = image_uri(m);
        json!(text.rsplit('/').next().unwrap_or_default())
    });
    body["TransferProtocolType"] = medium
        .as_ref()
        .and_then(protocol)
        .map_or(Value::Null, |p| json!(p));
    body["TransferMethod"] = json!("Stream");
    let actions = format!("{base}/VirtualMedia/Cd/Actions");
    body["Actions"] = json!({
        "#VirtualMedia.InsertMedia": {"target": format!("{actions}/{INSERT}")},
        "#VirtualMedia.EjectMedia": {"target": format!("{actions}/{EJECT}")},
    });
    Ok(Json(body))
}

fn bad(parameter: &str, reason: impl Into<String>) -> RedfishError {
    RedfishError::ActionParameterValueError {
        action: INSERT.into(),
        parameter: parameter.into(),
        reason: reason.into(),
    }
}

/// The medium and login an InsertMedia body asks for, checked.
fn insert_request(
    body: &serde_json::Map<String, Value>,
) -> Result<(Medium, Option<MediumLogin>), RedfishError> {
    let string = |key: &str| -> Result<Option<String>, RedfishError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(key, "must be a string")),
        }
    };
    let flag = |key: &str| -> Result<Option<bool>, RedfishError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(key, "must be true or false")),
        }
    };
    for key in body.keys() {
        if !matches!(
            key.as_str(),
            "Image"
                | "Inserted"
                | "WriteProtected"
                | "TransferProtocolType"
                | "TransferMethod"
                | "UserName"
                | "Password"
        ) {
            return Err(RedfishError::PropertyUnknown(key.clone()));
        }
    }
    let image = string("Image")?.ok_or_else(|| RedfishError::ActionParameterMissing {
        action: INSERT.into(),
        parameter: "Image".into(),
    })?;
    if flag("Inserted")? == Some(false) {
        return Err(bad(
            "Inserted",
            "only true: an image is inserted when the action runs",
        ));
    }
    if flag("WriteProtected")? == Some(false) {
        return Err(bad("WriteProtected", "a virtual CD is always read-only"));
    }
    match string("TransferMethod")?.as_deref() {
        None | Some("Stream") => {}
        Some("Upload") => {
            return Err(bad(
                "TransferMethod",
                "Upload is not offered: QEMU streams the image from its URL",
            ))
        }
        Some(other) => {
            return Err(RedfishError::ActionParameterValueNotInList {
                action: INSERT.into(),
                parameter: "TransferMethod".into(),
                value: other.into(),
            })
        }
    }
    let url = RemoteUrl::parse(&image).map_err(|e| bad("Image", e.to_string()))?;
    let medium = Medium::Remote(Remote {
        url,
        tls_verify: true,
    });
    if let Some(wanted) = string("TransferProtocolType")? {
        let actual = protocol(&medium).unwrap_or_default();
        if !matches!(
            wanted.as_str(),
            "CIFS" | "FTP" | "SFTP" | "HTTP" | "HTTPS" | "NFS" | "SCP" | "TFTP" | "OEM"
        ) {
            return Err(RedfishError::ActionParameterValueNotInList {
                action: INSERT.into(),
                parameter: "TransferProtocolType".into(),
                value: wanted,
            });
        }
        if wanted != actual {
            return Err(bad(
                "TransferProtocolType",
                format!("{wanted} does not match the Image URL ({actual}); http, https and nbd (OEM) URLs are supported"),
            ));
        }
    }
    let login = match (string("UserName")?, string("Password")?) {
        (None, None) => None,
        (Some(user), password) => Some(MediumLogin {
            user,
            password: password.unwrap_or_default(),
        }),
        (None, Some(_)) => return Err(bad("Password", "given without a UserName")),
    };
    Ok((medium, login))
}

/// A library image on this daemon's plain HTTP port (`http://ANY-NAME:PORT/images/SPEC`,
/// unsigned): a restricted item becomes its signed URL for a caller who may see it, and is a
/// missing resource (404, audited) for anyone else. Other URLs pass unchanged.
fn sign_own_image(
    media: &MediaAccess,
    who: &Principal,
    peer: &str,
    action: &str,
    medium: Medium,
) -> Result<Medium, RedfishError> {
    let Medium::Remote(Remote {
        url:
            RemoteUrl::Http {
                secure: false,
                host,
                port: Some(port),
                path_and_query,
            },
        tls_verify,
    }) = &medium
    else {
        return Ok(medium);
    };
    let ours = media
        .api
        .media_base
        .get()
        .and_then(|base| base.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let Some(spec) = path_and_query.strip_prefix("/images/") else {
        return Ok(medium);
    };
    let item = item_of_spec(spec);
    if ours != Some(*port) || spec.contains('?') || !media.gate.restricted(item) {
        return Ok(medium);
    }
    if !media.api.access.visible(who, item) {
        media.api.audit.record(
            Some(who),
            peer,
            action,
            item,
            Outcome::Denied,
            Some("no access to this item"),
        );
        return Err(RedfishError::NotFound(path_and_query.clone()));
    }
    let expires = jiff::Timestamp::now()
        .as_second()
        .saturating_add(crate::http::gate::ATTACHMENT_URL_LIFETIME.as_secs() as i64);
    let signed = media
        .gate
        .sign_path(path_and_query, u64::try_from(expires).unwrap_or(0));
    Ok(Medium::Remote(Remote {
        url: RemoteUrl::Http {
            secure: false,
            host: host.clone(),
            port: Some(*port),
            path_and_query: signed,
        },
        tls_verify: *tls_verify,
    }))
}

pub(crate) async fn insert(
    State(service): State<Shared>,
    Extension(who): Extension<Principal>,
    peer: Option<Extension<Peer>>,
    request: Uri,
    Path((id, device)): Path<(String, String)>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, RedfishError> {
    let uri = format!(
        "{}/VirtualMedia/{device}/Actions/{INSERT}",
        base(&request, &id)?
    );
    if device != "Cd" {
        return Err(RedfishError::NotFound(uri));
    }
    let body = object_body(body)?;
    let (medium, login) = insert_request(&body)?;
    let medium = match &service.media {
        Some(media) => {
            let peer = peer.map_or_else(|| "-".to_string(), |Extension(p)| p.addr);
            sign_own_image(media, &who, &peer, &format!("POST {uri}"), medium)?
        }
        None => medium,
    };
    service
        .blocking(move |store, _| {
            load_vm(store, &id, &uri)?;
            let live = store.insert_medium(&id, CD_SLOT, &medium, login.as_ref())?;
            tracing::info!(system = id, image = %medium, live, "redfish media inserted");
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn eject(
    State(service): State<Shared>,
    request: Uri,
    Path((id, device)): Path<(String, String)>,
) -> Result<StatusCode, RedfishError> {
    let uri = format!(
        "{}/VirtualMedia/{device}/Actions/{EJECT}",
        base(&request, &id)?
    );
    if device != "Cd" {
        return Err(RedfishError::NotFound(uri));
    }
    service
        .blocking(move |store, _| {
            load_vm(store, &id, &uri)?;
            // The guest's tray lock does not bind a BMC: eject like a physical button held.
            store.eject(&id, CD_SLOT, true)?;
            tracing::info!(system = id, "redfish media ejected");
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn insert_takes_http_and_nbd_urls_and_checks_the_protocol() {
        let (m, login) = insert_request(&body(json!({"Image": "http://10.0.0.1:8080/images/a.iso", "TransferProtocolType": "HTTP", "UserName": "u", "Password": "p"}))).unwrap();
        assert_eq!(protocol(&m), Some("HTTP"));
        assert_eq!(login.unwrap().user, "u");
        let (m, _) = insert_request(&body(json!({"Image": "nbd://h/x"}))).unwrap();
        assert_eq!(protocol(&m), Some("OEM"));
        assert!(insert_request(&body(
            json!({"Image": "http://h/a.iso", "TransferProtocolType": "HTTPS"})
        ))
        .is_err());
        assert!(insert_request(&body(json!({"Image": "file:///etc/passwd"}))).is_err());
        assert!(insert_request(&body(
            json!({"Image": "http://h/a.iso", "TransferMethod": "Upload"})
        ))
        .is_err());
        assert!(insert_request(&body(json!({"Image": "http://h/a.iso", "Bogus": 1}))).is_err());
        assert!(matches!(
            insert_request(&body(json!({}))),
            Err(RedfishError::ActionParameterMissing { .. })
        ));
    }
}
