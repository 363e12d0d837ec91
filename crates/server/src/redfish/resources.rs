//! The fixed resources of the service: root, `$metadata` and the OData service document,
//! the session, account and task services, the predefined roles, and the collection shape.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{RedfishError, REDFISH_VERSION};

/// Every schema namespace (and versioned namespace) the service's payloads use, as `$metadata`
/// lists them: (file name stem, versioned namespace or none for collections).
const SCHEMAS: &[(&str, Option<&str>)] = &[
    ("ServiceRoot", Some("ServiceRoot.v1_5_0")),
    ("SessionService", Some("SessionService.v1_1_0")),
    ("Session", Some("Session.v1_3_0")),
    ("SessionCollection", None),
    ("AccountService", Some("AccountService.v1_5_0")),
    ("ManagerAccount", Some("ManagerAccount.v1_4_0")),
    ("ManagerAccountCollection", None),
    ("Role", Some("Role.v1_2_0")),
    ("RoleCollection", None),
    ("TaskService", Some("TaskService.v1_1_0")),
    ("Task", Some("Task.v1_4_0")),
    ("TaskCollection", None),
    ("ComputerSystem", Some("ComputerSystem.v1_13_0")),
    ("ComputerSystemCollection", None),
    ("Chassis", Some("Chassis.v1_10_0")),
    ("ChassisCollection", None),
    ("Manager", Some("Manager.v1_10_0")),
    ("ManagerCollection", None),
    ("VirtualMedia", Some("VirtualMedia.v1_3_0")),
    ("VirtualMediaCollection", None),
    ("Message", Some("Message.v1_1_0")),
    ("Resource", Some("Resource.v1_0_0")),
    ("RedfishExtensions", Some("RedfishExtensions.v1_0_0")),
];

/// A collection payload: `#KindCollection.KindCollection` with its members' ids.
pub(crate) fn collection_body(
    kind: &str,
    id: &str,
    name: &str,
    members: impl Iterator<Item = String>,
) -> Value {
    let members: Vec<Value> = members.map(|m| json!({ "@odata.id": m })).collect();
    json!({
        "@odata.type": format!("#{kind}.{kind}"),
        "@odata.id": id,
        "Name": name,
        "Members@odata.count": members.len(),
        "Members": members,
    })
}

pub(crate) async fn versions() -> Json<Value> {
    Json(json!({ "v1": "/redfish/v1/" }))
}

/// A stable UUID for a name (the service, a VM): SHA-256 of it, shaped as a version 5 UUID.
pub(crate) fn name_uuid(name: &str) -> String {
    use sha2::Digest;
    let mut bytes: [u8; 16] = [0; 16];
    bytes.copy_from_slice(&sha2::Sha256::digest(format!("vmedia-redfish:{name}"))[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) async fn service_root() -> Json<Value> {
    Json(json!({
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "@odata.id": "/redfish/v1",
        "Id": "RootService",
        "Name": "vmedia Redfish service",
        "RedfishVersion": REDFISH_VERSION,
        "UUID": name_uuid("service"),
        "Product": "vmedia",
        "Vendor": "vmedia",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
        "Managers": {"@odata.id": "/redfish/v1/Managers"},
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "AccountService": {"@odata.id": "/redfish/v1/AccountService"},
        "Tasks": {"@odata.id": "/redfish/v1/TaskService"},
        "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
    }))
}

/// The CSDL document naming the DMTF schemas the payloads use (by their published names).
pub(crate) async fn metadata() -> Response {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n",
    );
    for (file, versioned) in SCHEMAS {
        let namespace = file;
        xml.push_str(&format!(
            "  <edmx:Reference Uri=\"http://redfish.dmtf.org/schemas/v1/{file}_v1.xml\">\n    <edmx:Include Namespace=\"{namespace}\"/>\n"
        ));
        if let Some(versioned) = versioned {
            xml.push_str(&format!("    <edmx:Include Namespace=\"{versioned}\"/>\n"));
        }
        xml.push_str("  </edmx:Reference>\n");
    }
    xml.push_str(
        "  <edmx:DataServices>\n    <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"Service\">\n      <EntityContainer Name=\"Service\" Extends=\"ServiceRoot.v1_5_0.ServiceContainer\"/>\n    </Schema>\n  </edmx:DataServices>\n</edmx:Edmx>\n",
    );
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

pub(crate) async fn odata() -> Json<Value> {
    let entry = |name: &str, url: &str| json!({"name": name, "kind": "Singleton", "url": url});
    Json(json!({
        "@odata.context": "/redfish/v1/$metadata",
        "value": [
            entry("Service", "/redfish/v1/"),
            entry("Systems", "/redfish/v1/Systems"),
            entry("Chassis", "/redfish/v1/Chassis"),
            entry("Managers", "/redfish/v1/Managers"),
            entry("SessionService", "/redfish/v1/SessionService"),
            entry("AccountService", "/redfish/v1/AccountService"),
            entry("Tasks", "/redfish/v1/TaskService"),
            entry("Sessions", "/redfish/v1/SessionService/Sessions"),
        ],
    }))
}

pub(crate) async fn session_service() -> Json<Value> {
    Json(json!({
        "@odata.type": "#SessionService.v1_1_0.SessionService",
        "@odata.id": "/redfish/v1/SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"},
    }))
}

pub(crate) async fn account_service() -> Json<Value> {
    Json(json!({
        "@odata.type": "#AccountService.v1_5_0.AccountService",
        "@odata.id": "/redfish/v1/AccountService",
        "Id": "AccountService",
        "Name": "Account Service",
        "ServiceEnabled": true,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Accounts": {"@odata.id": "/redfish/v1/AccountService/Accounts"},
        "Roles": {"@odata.id": "/redfish/v1/AccountService/Roles"},
    }))
}

/// The three predefined roles and the Redfish privileges each holds.
const ROLES: &[(&str, &[&str])] = &[
    (
        "Administrator",
        &[
            "Login",
            "ConfigureManager",
            "ConfigureUsers",
            "ConfigureSelf",
            "ConfigureComponents",
        ],
    ),
    (
        "Operator",
        &["Login", "ConfigureSelf", "ConfigureComponents"],
    ),
    ("ReadOnly", &["Login", "ConfigureSelf"]),
];

const ROLES_URI: &str = "/redfish/v1/AccountService/Roles";

pub(crate) async fn roles() -> Json<Value> {
    Json(collection_body(
        "RoleCollection",
        ROLES_URI,
        "Roles",
        ROLES.iter().map(|(id, _)| format!("{ROLES_URI}/{id}")),
    ))
}

pub(crate) async fn role(Path(id): Path<String>) -> Result<Json<Value>, RedfishError> {
    let (id, privileges) = ROLES
        .iter()
        .find(|(name, _)| *name == id)
        .ok_or_else(|| RedfishError::NotFound(format!("{ROLES_URI}/{id}")))?;
    Ok(Json(json!({
        "@odata.type": "#Role.v1_2_0.Role",
        "@odata.id": format!("{ROLES_URI}/{id}"),
        "Id": id,
        "Name": format!("{id} role"),
        "RoleId": id,
        "IsPredefined": true,
        "AssignedPrivileges": privileges,
    })))
}

pub(crate) async fn task_service() -> Json<Value> {
    Json(json!({
        "@odata.type": "#TaskService.v1_1_0.TaskService",
        "@odata.id": "/redfish/v1/TaskService",
        "Id": "TaskService",
        "Name": "Task Service",
        "ServiceEnabled": true,
        "CompletedTaskOverWritePolicy": "Oldest",
        "LifeCycleEventOnTaskStateChange": false,
        "DateTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "Status": {"State": "Enabled", "Health": "OK"},
        "Tasks": {"@odata.id": "/redfish/v1/TaskService/Tasks"},
    }))
}

/// Every Redfish action here completes before its answer, so no task is ever left running.
pub(crate) async fn tasks() -> Json<Value> {
    Json(collection_body(
        "TaskCollection",
        "/redfish/v1/TaskService/Tasks",
        "Tasks",
        std::iter::empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_uuid_is_stable_and_shaped() {
        let a = name_uuid("vm1");
        assert_eq!(a, name_uuid("vm1"));
        assert_ne!(a, name_uuid("vm2"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5");
    }
}
