//! Redfish with real clients against the daemon's HTTPS listener: DMTF's
//! Redfish-Service-Validator over the whole service (zero failures, offline schemas), role
//! checks with plain HTTP requests, and sushy driving a managed QEMU VM (TCG): virtual CD from
//! a library URL, boot override Once to Cd, power on, the ISO boots; a ForceRestart then boots
//! the disk because the override was consumed.

#[path = "support/boot.rs"]
mod boot_fixtures;
#[path = "support/redfish.rs"]
mod redfish_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use boot_fixtures::{bootable_disk, hybrid_iso};
use redfish_support::{csdl_dir, venv_python, Daemon};
use support::{require_tool, BOOT_MARKER};
use vmedia_boot::managed::VmStore;
use vmedia_boot::media::DiskFormat;
use vmedia_boot::spec::{Accel, BootDevice, CdromSlot, Disk, Firmware, Net, VmSpec};
use vmedia_boot::store::BootConfig;

/// A TCG boot here takes 5-60 s on a busy machine; guests get this long to reach their marker.
const GUEST_WAIT: Duration = Duration::from_secs(300);

fn python(script: &str, env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = Command::new(venv_python("sushy"));
    cmd.arg("-c").arg(script);
    // requests lets a CA bundle named in the environment override a client's verify=False;
    // the daemon's certificate here is self-signed.
    cmd.env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn service_validator_finds_no_failure_over_the_whole_service() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootConfig::new(dir.path().join("vms-home"));
    let store = VmStore::new(&boot);
    let mut web = VmSpec::new("web-01");
    web.cdroms = vec![CdromSlot::default()];
    web.net = Net::User {
        tftp: None,
        bootfile: None,
    };
    store.create(&web).unwrap();
    let mut uefi = VmSpec::new("uefi-02");
    uefi.firmware = Firmware::Uefi;
    uefi.cdroms = vec![CdromSlot::default(), CdromSlot::default()];
    store.create(&uefi).unwrap();
    let daemon = Daemon::start(dir.path(), &boot);
    let validator = venv_python("redfish_service_validator")
        .parent()
        .unwrap()
        .join("rf_service_validator");
    let logs = dir.path().join("validator-logs");
    for auth in ["Basic", "Session"] {
        let out = Command::new(&validator)
            .args(["--ip", &daemon.https, "-u", "admin", "-p", "admin-pw"])
            .args(["--authtype", auth])
            .arg("--schema_directory")
            .arg(csdl_dir())
            .arg("--logdir")
            .arg(&logs)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "validator ({auth}) failed:\n{text}");
        // Per resource "Fail: N," and a totals table whose third column counts failures.
        let failing: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Fail: ") && !l.contains("Fail: 0,"))
            .collect();
        assert!(
            failing.is_empty(),
            "validator ({auth}) reports failures:\n{}\n\n{text}",
            failing.join("\n")
        );
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.contains("PASS") && l.contains("FAIL"))
            .expect("a summary table");
        let totals: Vec<&str> = lines[header + 2]
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(totals.get(2), Some(&"0"), "failures in:\n{text}");
        let passed: u32 = totals[0].parse().unwrap();
        assert!(passed > 300, "the validator checked little: {text}");
        assert!(
            text.contains("Systems/web-01") || logs.read_dir().unwrap().count() > 0,
            "the validator walked nothing:\n{text}"
        );
    }
}

/// Plain HTTP requests: who may read and change what, and the Redfish error shape.
#[test]
fn roles_sessions_and_errors_follow_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootConfig::new(dir.path().join("vms-home"));
    let mut spec = VmSpec::new("lab");
    spec.cdroms = vec![CdromSlot::default()];
    VmStore::new(&boot).create(&spec).unwrap();
    let daemon = Daemon::start(dir.path(), &boot);
    let script = r#"
import os, requests, urllib3
urllib3.disable_warnings()
base = os.environ["BASE"]
s = requests.Session(); s.verify = False
def code(method, path, auth=None, **kw):
    return s.request(method, base + path, auth=auth, **kw)
# Discovery is public; everything else needs credentials.
assert code("GET", "/redfish/v1/").status_code == 200
assert code("GET", "/redfish/v1/$metadata").headers["Content-Type"].startswith("application/xml")
r = code("GET", "/redfish/v1/Systems")
assert r.status_code == 401, r.status_code
assert r.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("NoValidSession")
assert code("GET", "/redfish/v1/Systems", auth=("admin", "wrong")).status_code == 401
# A read-only user reads but changes nothing.
viewer = ("viewer", "viewer-pw")
assert code("GET", "/redfish/v1/Systems/lab", auth=viewer).status_code == 200
for method, path, body in [
    ("POST", "/redfish/v1/Systems/lab/Actions/ComputerSystem.Reset", {"ResetType": "On"}),
    ("PATCH", "/redfish/v1/Systems/lab", {"Boot": {"BootSourceOverrideTarget": "Cd"}}),
    ("POST", "/redfish/v1/Managers/lab/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", {"Image": "http://127.0.0.1:9/x.iso"}),
    ("POST", "/redfish/v1/Systems/lab/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia", {}),
]:
    r = code(method, path, auth=viewer, json=body)
    assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert r.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("InsufficientPrivilege")
# Sessions: X-Auth-Token and Location, the token works, DELETE ends it.
r = code("POST", "/redfish/v1/SessionService/Sessions", json={"UserName": "operator", "Password": "operator-pw"})
assert r.status_code == 201, r.text
token, location = r.headers["X-Auth-Token"], r.headers["Location"]
assert s.get(base + "/redfish/v1/Systems/lab", headers={"X-Auth-Token": token}).status_code == 200
assert s.get(base + location, headers={"X-Auth-Token": token}).json()["UserName"] == "operator"
assert s.delete(base + location, headers={"X-Auth-Token": token}).status_code == 204
assert s.get(base + "/redfish/v1/Systems/lab", headers={"X-Auth-Token": token}).status_code == 401
assert code("POST", "/redfish/v1/SessionService/Sessions", json={"UserName": "operator", "Password": "x"}).status_code == 401
# PATCH with ETags: a stale If-Match is refused, the current one applies.
op = ("operator", "operator-pw")
r = code("GET", "/redfish/v1/Systems/lab", auth=op)
etag = r.headers["ETag"]
assert code("PATCH", "/redfish/v1/Systems/lab", auth=op, headers={"If-Match": '"stale"'},
            json={"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}).status_code == 412
r = code("PATCH", "/redfish/v1/Systems/lab", auth=op, headers={"If-Match": etag},
         json={"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Continuous"}})
assert r.status_code == 200, r.text
assert r.json()["Boot"]["BootSourceOverrideEnabled"] == "Continuous"
assert r.headers["ETag"] != etag
r = code("PATCH", "/redfish/v1/Systems/lab", auth=op, json={"Boot": {"BootSourceOverrideEnabled": "Disabled"}})
assert r.json()["Boot"]["BootSourceOverrideTarget"] == "None", r.text
# Bad values get Redfish messages.
r = code("PATCH", "/redfish/v1/Systems/lab", auth=op, json={"Boot": {"BootSourceOverrideTarget": "Floppy"}})
assert r.status_code == 400 and r.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("PropertyValueNotInList"), r.text
r = code("POST", "/redfish/v1/Systems/lab/Actions/ComputerSystem.Reset", auth=op, json={"ResetType": "Explode"})
assert r.status_code == 400 and "ActionParameterValueNotInList" in r.text, r.text
r = code("POST", "/redfish/v1/Systems/lab/Actions/ComputerSystem.Reset", auth=op, data="{nope", headers={"Content-Type": "application/json"})
assert r.status_code == 400 and "MalformedJSON" in r.text, r.text
r = code("GET", "/redfish/v1/Systems/nobody", auth=op)
assert r.status_code == 404 and "ResourceNotFound" in r.text
r = code("GET", "/redfish/v1/Systems/.hidden", auth=op)
assert r.status_code == 404
# A stopped VM takes a URL into its CD (stored for its next start), and gives it back.
r = code("POST", "/redfish/v1/Systems/lab/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", auth=op,
         json={"Image": "http://127.0.0.1:9/images/demo.iso", "TransferProtocolType": "HTTP"})
assert r.status_code == 204, r.text
cd = code("GET", "/redfish/v1/Managers/lab/VirtualMedia/Cd", auth=op).json()
assert cd["Inserted"] is True and cd["Image"] == "http://127.0.0.1:9/images/demo.iso" and cd["ConnectedVia"] == "URI", cd
r = code("POST", "/redfish/v1/Managers/lab/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", auth=op,
         json={"Image": "ftp://127.0.0.1/x.iso"})
assert r.status_code == 400, r.text
assert code("POST", "/redfish/v1/Managers/lab/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia", auth=op, json={}).status_code == 204
assert code("GET", "/redfish/v1/Systems/lab/VirtualMedia/Cd", auth=op).json()["Inserted"] is False
print("ok")
"#;
    let (ok, text) = python(script, &[("BASE", daemon.https.clone())]);
    assert!(ok && text.contains("ok"), "{text}");
    let toml = std::fs::read_to_string(boot.state_dir().join("vms/lab/vm.toml")).unwrap();
    assert!(!toml.contains("medium"), "ejected: {toml}");
}

fn wait_log(log: &Path, needle: &str, after: usize) {
    let deadline = Instant::now() + GUEST_WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.get(after..).is_some_and(|t| t.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_stopped(store: &VmStore, name: &str) {
    let deadline = Instant::now() + GUEST_WAIT;
    while store.state(name).pid().is_some() {
        assert!(Instant::now() < deadline, "VM {name} still runs");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A managed TCG VM that boots its disk normally and has an empty CD, a library holding a
/// bootable ISO tagged `tag`, and the daemon serving both (its QEMU is ended on drop).
struct Lab {
    dir: tempfile::TempDir,
    store: VmStore,
    name: String,
    daemon: Daemon,
    _cleanup: KillOnDrop,
}

fn lab(firmware: Firmware, disk_format: &str, tag: &str) -> Lab {
    require_tool("qemu-system-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let boot = BootConfig::new(dir.path().join("h"));
    let store = VmStore::new(&boot);
    let name = format!("rf-{tag}");
    let mut spec = VmSpec::new(&name);
    spec.firmware = firmware;
    spec.accel = Accel::Tcg;
    spec.boot_order = vec![BootDevice::Disk, BootDevice::Cdrom];
    spec.cdroms = vec![CdromSlot::default()];
    spec.disks = vec![Disk {
        medium: bootable_disk(disk_format).into(),
        format: DiskFormat::parse(disk_format).unwrap(),
        writable: false,
    }];
    store.create(&spec).unwrap();
    let library = vmedia_library::Library::init(
        &vmedia_library::OpenConfig::folder(dir.path().join("library"), "test@localhost"),
        &vmedia_library::InitOptions::default(),
    )
    .unwrap();
    library
        .add(
            "demo-iso",
            vmedia_library::AddSource::File(hybrid_iso(tag)),
            &vmedia_library::AddOptions::default(),
            &vmedia_io::NoProgress,
        )
        .unwrap();
    let daemon = Daemon::start_with(dir.path(), &boot, library);
    let cleanup = KillOnDrop(store_clone(&boot), name.clone());
    Lab {
        dir,
        store,
        name,
        daemon,
        _cleanup: cleanup,
    }
}

/// sushy: InsertMedia (a library URL QEMU reads over HTTP), boot override Once to Cd, power on:
/// the ISO boots. The override is then gone, and a ForceRestart boots the disk.
fn sushy_boots_the_cd_once_then_the_disk(firmware: Firmware, disk_format: &str, tag: &str) {
    let Lab {
        store,
        name,
        daemon,
        ..
    } = &lab(firmware, disk_format, tag);
    let (store, name) = (store, name.clone());
    let env = [
        ("BASE", daemon.https.clone()),
        ("IMAGE", format!("{}/images/demo-iso", daemon.http)),
        ("SYSTEM", format!("/redfish/v1/Systems/{name}")),
        ("MANAGER", format!("/redfish/v1/Managers/{name}")),
        (
            "MODE",
            match firmware {
                Firmware::Bios => "Legacy",
                Firmware::Uefi => "UEFI",
            }
            .to_string(),
        ),
    ];
    let first = r#"
import os, sushy
root = sushy.Sushy(os.environ["BASE"] + "/redfish/v1", username="operator", password="operator-pw", verify=False)
system = root.get_system(os.environ["SYSTEM"])
manager = root.get_manager(os.environ["MANAGER"])
cd = manager.virtual_media.get_member(os.environ["MANAGER"] + "/VirtualMedia/Cd")
cd.insert_media(os.environ["IMAGE"], inserted=True, write_protected=True)
cd.refresh()
assert cd.inserted and cd.image == os.environ["IMAGE"], (cd.inserted, cd.image)
mode = sushy.BOOT_SOURCE_MODE_UEFI if os.environ["MODE"] == "UEFI" else sushy.BOOT_SOURCE_MODE_BIOS
system.set_system_boot_options(sushy.BOOT_SOURCE_TARGET_CD, enabled=sushy.BOOT_SOURCE_ENABLED_ONCE, mode=mode)
system.refresh()
assert system.boot.enabled == sushy.BOOT_SOURCE_ENABLED_ONCE, system.boot.enabled
assert system.boot.target == sushy.BOOT_SOURCE_TARGET_CD, system.boot.target
assert system.power_state == sushy.POWER_STATE_OFF
system.reset_system(sushy.RESET_ON)
system.refresh()
assert system.power_state == sushy.POWER_STATE_ON
# Once is consumed by the start that applied it.
assert system.boot.enabled == sushy.BOOT_SOURCE_ENABLED_DISABLED, system.boot.enabled
print("ok")
"#;
    let (ok, text) = python(first, &env);
    assert!(ok && text.contains("ok"), "{text}");
    let log = store.serial_log(&name);
    wait_log(&log, BOOT_MARKER, 0);
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        console.contains(&format!("vmedia.from={tag}")),
        "the first boot came from the CD: {console}"
    );
    assert!(!console.contains("vmedia.from=disk"), "{console}");
    // The payload powers off after its marker.
    wait_stopped(store, &name);
    let seen = console.len();
    let second = r#"
import os, sushy
root = sushy.Sushy(os.environ["BASE"] + "/redfish/v1", username="operator", password="operator-pw", verify=False)
system = root.get_system(os.environ["SYSTEM"])
assert system.boot.enabled == sushy.BOOT_SOURCE_ENABLED_DISABLED, system.boot.enabled
system.reset_system(sushy.RESET_FORCE_RESTART)
system.refresh()
assert system.power_state == sushy.POWER_STATE_ON
print("ok")
"#;
    let (ok, text) = python(second, &env);
    assert!(ok && text.contains("ok"), "{text}");
    wait_log(&log, "vmedia.from=disk", seen);
    wait_log(&log, BOOT_MARKER, seen);
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        !console[seen..].contains(&format!("vmedia.from={tag}")),
        "the restart booted the CD again: {}",
        &console[seen..]
    );
    wait_stopped(store, &name);
}

fn store_clone(boot: &BootConfig) -> VmStore {
    VmStore::new(boot)
}

/// Ends the test VM's QEMU however the test ends.
struct KillOnDrop(VmStore, String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill(&self.1);
    }
}

#[test]
fn sushy_boots_a_virtual_cd_once_then_the_disk_under_bios() {
    sushy_boots_the_cd_once_then_the_disk(Firmware::Bios, "qcow2", "redfish-bios");
}

/// OVMF rewrites its BootOrder from QEMU's fw_cfg `bootorder` (the devices' `bootindex`) on
/// every boot, so the start after the one-time CD boot boots the disk, as under SeaBIOS.
#[test]
fn sushy_boots_a_virtual_cd_once_then_the_disk_under_uefi() {
    sushy_boots_the_cd_once_then_the_disk(Firmware::Uefi, "vmdk", "redfish-uefi");
}

/// Ansible's community.general.redfish_command, unmodified, against the HTTPS listener:
/// VirtualMediaInsert (a library URL), SetOneTimeBoot Cd and PowerOn; the VM boots the ISO, and
/// the override is consumed by that boot. The playbook is the one docs/api.md shows.
#[test]
fn ansible_inserts_media_sets_one_time_boot_and_powers_on() {
    let ansible = venv_python("ansible")
        .parent()
        .unwrap()
        .join("ansible-playbook");
    assert!(
        ansible.exists(),
        "{} missing: run scripts/setup.sh",
        ansible.display()
    );
    let lab = lab(Firmware::Bios, "qcow2", "redfish-ansible");
    let work = lab.dir.path().join("ansible");
    std::fs::create_dir_all(&work).unwrap();
    let base = lab.daemon.https.trim_start_matches("https://").to_string();
    let image = format!("{}/images/demo-iso", lab.daemon.http);
    let playbook = format!(
        r#"- name: Boot a vmedia VM from a library ISO, once
  hosts: localhost
  gather_facts: false
  vars:
    bmc: &bmc
      baseuri: "{base}"
      username: operator
      password: operator-pw
      validate_certs: false
      resource_id: "{name}"
  tasks:
    - name: Insert the ISO into the virtual CD
      community.general.redfish_command:
        <<: *bmc
        category: Manager
        command: VirtualMediaInsert
        virtual_media:
          image_url: "{image}"
          media_types: [CD, DVD]
          transfer_protocol_type: HTTP
    - name: Boot from the CD once
      community.general.redfish_command:
        <<: *bmc
        category: Systems
        command: SetOneTimeBoot
        bootdevice: Cd
    - name: Power on
      community.general.redfish_command:
        <<: *bmc
        category: Systems
        command: PowerOn
"#,
        name = lab.name
    );
    std::fs::write(work.join("boot.yml"), &playbook).unwrap();
    std::fs::write(
        work.join("hosts"),
        format!(
            "localhost ansible_connection=local ansible_python_interpreter={}\n",
            venv_python("ansible").display()
        ),
    )
    .unwrap();
    let out = Command::new(&ansible)
        .current_dir(&work)
        .args(["-i", "hosts", "boot.yml"])
        .env("ANSIBLE_HOME", work.join("home"))
        .env("ANSIBLE_LOCAL_TEMP", work.join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ansible-playbook failed:\n{text}");
    assert!(
        text.contains("changed=3") && text.contains("failed=0"),
        "every task changes something once:\n{text}"
    );
    let log = lab.store.serial_log(&lab.name);
    wait_log(&log, BOOT_MARKER, 0);
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        console.contains("vmedia.from=redfish-ansible"),
        "the VM booted the CD: {console}"
    );
    let config = lab.store.load(&lab.name).unwrap();
    assert_eq!(config.boot_once, None, "the one-time boot was consumed");
    wait_stopped(&lab.store, &lab.name);
}
