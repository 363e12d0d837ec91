//! Systems (the managed VMs), their chassis and managers: power state, the Reset action, and
//! the boot override (Once really is once: the VM store clears it when a start applies it).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use vmedia_boot::kvm::resolve_accel;
use vmedia_boot::managed::{VmConfig, VmStore};
use vmedia_boot::spec::validate_name;

use super::resources::{collection_body, name_uuid};
use super::{object_body, RedfishError, Shared};
use crate::api::boot_override::{self, Dialect, OverrideError, OverrideRequest, Target};

pub(crate) const SYSTEMS: &str = "/redfish/v1/Systems";
pub(crate) const CHASSIS: &str = "/redfish/v1/Chassis";
pub(crate) const MANAGERS: &str = "/redfish/v1/Managers";

/// The reset types offered, each mapped to a VM store operation.
const RESET_TYPES: [&str; 4] = ["On", "ForceOff", "GracefulShutdown", "ForceRestart"];

/// A VM's stored definition and whether it runs.
pub(crate) struct Vm {
    pub(crate) config: VmConfig,
    pub(crate) running: bool,
}

/// Loads VM `id`, or ResourceNotFound for `uri` when there is no such VM.
pub(crate) fn load_vm(store: &VmStore, id: &str, uri: &str) -> Result<Vm, RedfishError> {
    if validate_name(id).is_err() || !store.dir(id).join("vm.toml").exists() {
        return Err(RedfishError::NotFound(uri.to_string()));
    }
    let config = store.load(id)?;
    let running = store.state(id).pid().is_some();
    Ok(Vm { config, running })
}

fn power_state(running: bool) -> &'static str {
    if running {
        "On"
    } else {
        "Off"
    }
}

fn boot_body(config: &VmConfig) -> Value {
    let now = boot_override::current(config);
    json!({
        "BootSourceOverrideEnabled": now.enabled.name(Dialect::Redfish),
        "BootSourceOverrideTarget": now.target.name(Dialect::Redfish),
        "BootSourceOverrideTarget@Redfish.AllowableValues": Target::allowed(Dialect::Redfish),
        "BootSourceOverrideMode": now.mode.name(Dialect::Redfish),
    })
}

fn system_body(id: &str, vm: &Vm) -> Value {
    let uri = format!("{SYSTEMS}/{id}");
    let spec = &vm.config.spec;
    json!({
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "@odata.id": uri,
        "Id": id,
        "Name": id,
        "Description": "A virtual machine vmedia manages",
        "SystemType": "Virtual",
        "Manufacturer": "QEMU",
        "Model": "q35",
        "UUID": name_uuid(id),
        "Status": {"State": "Enabled", "Health": "OK"},
        "PowerState": power_state(vm.running),
        "ProcessorSummary": {"Count": spec.cpus},
        "MemorySummary": {"TotalSystemMemoryGiB": f64::from(spec.memory_mib) / 1024.0},
        "Boot": boot_body(&vm.config),
        "VirtualMedia": {"@odata.id": format!("{uri}/VirtualMedia")},
        "Links": {
            "Chassis": [{"@odata.id": format!("{CHASSIS}/{id}")}],
            "ManagedBy": [{"@odata.id": format!("{MANAGERS}/{id}")}],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("{uri}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": RESET_TYPES,
            }
        },
    })
}

/// A strong ETag over the resource's representation: any change to it changes the tag.
fn etag(body: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body.to_string().as_bytes());
    format!("\"{}\"", hex::encode(&digest[..12]))
}

fn with_etag(body: Value) -> Response {
    let tag = etag(&body);
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn names(service: &Shared) -> Result<Vec<String>, RedfishError> {
    service.blocking(|store, _| Ok(store.list()?)).await
}

pub(crate) async fn collection_of(
    service: &Shared,
    kind: &str,
    base: &str,
    name: &str,
) -> Result<Json<Value>, RedfishError> {
    let names = names(service).await?;
    Ok(Json(collection_body(
        kind,
        base,
        name,
        names.iter().map(|n| format!("{base}/{n}")),
    )))
}

pub(crate) async fn collection(State(service): State<Shared>) -> Result<Json<Value>, RedfishError> {
    collection_of(
        &service,
        "ComputerSystemCollection",
        SYSTEMS,
        "Computer Systems",
    )
    .await
}

async fn get_vm(service: &Shared, id: &str, uri: String) -> Result<Vm, RedfishError> {
    let id = id.to_string();
    service
        .blocking(move |store, _| load_vm(store, &id, &uri))
        .await
}

pub(crate) async fn system(
    State(service): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, RedfishError> {
    let vm = get_vm(&service, &id, format!("{SYSTEMS}/{id}")).await?;
    Ok(with_etag(system_body(&id, &vm)))
}

/// The override a PATCH's `Boot` object asks for, in the shared model (`api/boot_override.rs`).
fn boot_request(boot: &Map<String, Value>) -> Result<OverrideRequest, RedfishError> {
    for key in boot.keys() {
        if !matches!(
            key.as_str(),
            "BootSourceOverrideEnabled" | "BootSourceOverrideTarget" | "BootSourceOverrideMode"
        ) {
            return Err(RedfishError::PropertyUnknown(format!("Boot/{key}")));
        }
    }
    let text = |key: &str| -> Result<Option<&str>, RedfishError> {
        match boot.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(RedfishError::PropertyValueNotInList {
                property: key.into(),
                value: other.to_string(),
            }),
        }
    };
    OverrideRequest::parse(
        Dialect::Redfish,
        text("BootSourceOverrideEnabled")?,
        text("BootSourceOverrideTarget")?,
        text("BootSourceOverrideMode")?,
    )
    .map_err(override_error)
}

/// A refusal of the shared model as a Redfish error.
fn override_error(error: OverrideError) -> RedfishError {
    match error {
        OverrideError::NotInList {
            property, value, ..
        } => RedfishError::PropertyValueNotInList {
            property: property.into(),
            value,
        },
        OverrideError::UefiHttpNeedsUefi { property, value } => {
            RedfishError::PropertyValueNotInList {
                property: property.into(),
                value: format!("{value} (needs BootSourceOverrideMode UEFI)"),
            }
        }
        OverrideError::NeedsTarget { property, value } => RedfishError::PropertyValueNotInList {
            property: property.into(),
            value: format!("{value} (needs a BootSourceOverrideTarget)"),
        },
        OverrideError::Running(name) => RedfishError::Boot(vmedia_boot::BootError::Vm {
            name,
            reason:
                "is running: BootSourceOverrideMode (its firmware) changes only while it is off"
                    .into(),
        }),
        OverrideError::Store(e) => RedfishError::Boot(e),
    }
}

pub(crate) async fn patch_system(
    State(service): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RedfishError> {
    let body = object_body(body)?;
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let uri = format!("{SYSTEMS}/{id}");
    let vm = service
        .blocking(move |store, _| {
            let vm = load_vm(store, &id, &uri)?;
            if let Some(tag) = &if_match {
                let current = etag(&system_body(&id, &vm));
                let matches = tag
                    .split(',')
                    .map(|t| t.trim().trim_start_matches("W/"))
                    .any(|t| t == "*" || t == current);
                if !matches {
                    return Err(RedfishError::PreconditionFailed);
                }
            }
            let mut boot = None;
            for (key, value) in &body {
                match key.as_str() {
                    "Boot" => match value {
                        Value::Object(map) => boot = Some(map.clone()),
                        _ => {
                            return Err(RedfishError::PropertyValueNotInList {
                                property: "Boot".into(),
                                value: value.to_string(),
                            })
                        }
                    },
                    k if k.starts_with("@odata.") => {}
                    "Id" | "Name" | "PowerState" | "UUID" | "SystemType" => {
                        return Err(RedfishError::PropertyNotWritable(key.clone()))
                    }
                    _ => return Err(RedfishError::PropertyUnknown(key.clone())),
                }
            }
            if let Some(boot) = boot {
                boot_request(&boot)?
                    .apply(store, &id)
                    .map_err(override_error)?;
            }
            load_vm(store, &id, &uri).map(|vm| (id, vm))
        })
        .await?;
    Ok(with_etag(system_body(&vm.0, &vm.1)))
}

pub(crate) async fn reset(
    State(service): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, RedfishError> {
    const ACTION: &str = "ComputerSystem.Reset";
    let body = object_body(body)?;
    let kind = match body.get("ResetType") {
        None => {
            return Err(RedfishError::ActionParameterMissing {
                action: ACTION.into(),
                parameter: "ResetType".into(),
            })
        }
        Some(Value::String(s)) if RESET_TYPES.contains(&s.as_str()) => s.clone(),
        Some(other) => {
            return Err(RedfishError::ActionParameterValueNotInList {
                action: ACTION.into(),
                parameter: "ResetType".into(),
                value: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
            })
        }
    };
    let uri = format!("{SYSTEMS}/{id}");
    service
        .blocking(move |store, boot| {
            let vm = load_vm(store, &id, &uri)?;
            let (accel, _) = resolve_accel(vm.config.spec.accel, boot);
            match kind.as_str() {
                "On" if vm.running => {}
                "On" => {
                    store.start(&id, accel)?;
                }
                "ForceOff" => {
                    store.kill(&id)?;
                }
                "GracefulShutdown" => {
                    store.request_powerdown(&id)?;
                }
                _ => {
                    store.reset(&id, accel)?;
                }
            }
            tracing::info!(system = id, reset = kind, "redfish reset");
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn chassis_collection(
    State(service): State<Shared>,
) -> Result<Json<Value>, RedfishError> {
    collection_of(&service, "ChassisCollection", CHASSIS, "Chassis").await
}

pub(crate) async fn chassis(
    State(service): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, RedfishError> {
    let uri = format!("{CHASSIS}/{id}");
    let vm = get_vm(&service, &id, uri.clone()).await?;
    Ok(Json(json!({
        "@odata.type": "#Chassis.v1_10_0.Chassis",
        "@odata.id": uri,
        "Id": id,
        "Name": format!("Chassis of {id}"),
        "ChassisType": "Other",
        "PowerState": power_state(vm.running),
        "Status": {"State": "Enabled", "Health": "OK"},
        "Links": {
            "ComputerSystems": [{"@odata.id": format!("{SYSTEMS}/{id}")}],
            "ManagedBy": [{"@odata.id": format!("{MANAGERS}/{id}")}],
        },
    })))
}

pub(crate) async fn manager_collection(
    State(service): State<Shared>,
) -> Result<Json<Value>, RedfishError> {
    collection_of(&service, "ManagerCollection", MANAGERS, "Managers").await
}

pub(crate) async fn manager(
    State(service): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, RedfishError> {
    let uri = format!("{MANAGERS}/{id}");
    get_vm(&service, &id, uri.clone()).await?;
    Ok(Json(json!({
        "@odata.type": "#Manager.v1_10_0.Manager",
        "@odata.id": uri,
        "Id": id,
        "Name": format!("Manager of {id}"),
        "ManagerType": "BMC",
        "FirmwareVersion": env!("CARGO_PKG_VERSION"),
        "UUID": name_uuid(&format!("manager:{id}")),
        "Status": {"State": "Enabled", "Health": "OK"},
        "VirtualMedia": {"@odata.id": format!("{uri}/VirtualMedia")},
        "Links": {
            "ManagerForServers": [{"@odata.id": format!("{SYSTEMS}/{id}")}],
            "ManagerForChassis": [{"@odata.id": format!("{CHASSIS}/{id}")}],
        },
    })))
}
