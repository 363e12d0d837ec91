//! Network boot from the library: a folder library holding a small ISO is served by the netboot
//! server `start_netboot` starts from a rules file with a `[server]` table. Files inside the
//! image (`library:NAME[@V]:/path`) and the whole image (`library:NAME@V`) come over HTTP
//! (curl) and TFTP (a plain RFC 1350 client); a rule pinned to `@1` keeps serving version 1
//! after version 2 is added, while `library:NAME` follows the current version.

#[path = "support_netboot.rs"]
mod support_netboot;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use support_netboot::{
    curl, curl_status, free_ports, pattern, tftp_get, write_iso, TFTP_ACCESS_VIOLATION,
    TFTP_FILE_NOT_FOUND,
};
use vmedia_io::NoProgress;
use vmedia_library::{AddOptions, AddSource, InitOptions, Library, OpenConfig};
use vmedia_netboot::{DhcpConfig, Server, ServerConfig};
use vmedia_server::netboot::{
    load_netboot_config, start_netboot, start_netboot_gated, NetbootStartError,
};

/// A kernel spanning several TFTP blocks and a short last one.
const KERNEL_LEN: usize = 5 * 512 + 100;
const INITRD_LEN: usize = 200_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Adds an ISO holding `boot/vmlinuz` (`kernel`) and `boot/initrd.img` as a new version of
/// `debian`; returns the ISO's bytes.
fn add_version(library: &Library, dir: &Path, tag: &str, kernel: &[u8]) -> Vec<u8> {
    let tree = dir.join(format!("tree-{tag}"));
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz"), kernel).unwrap();
    std::fs::write(tree.join("boot/initrd.img"), pattern(7, INITRD_LEN)).unwrap();
    let iso = dir.join(format!("{tag}.iso"));
    write_iso(&tree, &iso);
    library
        .add(
            "debian",
            AddSource::File(iso.clone()),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap();
    std::fs::read(iso).unwrap()
}

const RULES: &str = r#"
[[machine]]
mac = "52:54:00:00:00:01"
kernel = "library:debian@1:/boot/vmlinuz"
initrd = ["library:debian@1:/boot/initrd.img"]

[[machine]]
mac = "52:54:00:00:00:02"
kernel = "library:debian:/boot/vmlinuz"
"#;

/// The URL on the `kernel` line of an iPXE script.
fn kernel_url(script: &str) -> String {
    let line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in {script}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn library_images_are_served_over_http_and_tftp_and_pinned_rules_keep_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let library = Library::init(
        &OpenConfig::folder(dir.path().join("library"), "tester@host"),
        &InitOptions::default(),
    )
    .unwrap();
    let kernel_one = pattern(1, KERNEL_LEN);
    let kernel_two = pattern(2, KERNEL_LEN + 777);
    let iso_one = add_version(&library, dir.path(), "one", &kernel_one);
    let initrd = pattern(7, INITRD_LEN);

    let root = dir.path().join("boot-root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"plain file\n").unwrap();
    let (tftp_port, http_port) = free_ports();
    let config = dir.path().join("netboot.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nroot = \"boot-root\"\nlisten = \"127.0.0.1\"\ntftp_port = {tftp_port}\nhttp_port = {http_port}\n{RULES}"
        ),
    )
    .unwrap();

    runtime().block_on(async {
        let server = start_netboot(&config, library.clone()).await.unwrap();
        let bound = server.bound().clone();
        let tftp = bound.tftp.unwrap();
        let http = format!("http://{}", bound.http.unwrap());

        // The root's own files are still served.
        assert_eq!(curl(&format!("{http}/hello.txt")), b"plain file\n");
        assert_eq!(tftp_get(tftp, "hello.txt").unwrap(), b"plain file\n");

        // Files inside the current version, over both protocols.
        assert_eq!(
            curl(&format!("{http}/library:debian:/boot/vmlinuz")),
            kernel_one
        );
        assert_eq!(
            curl(&format!("{http}/library%3Adebian%3A/boot/initrd.img")),
            initrd
        );
        assert_eq!(
            tftp_get(tftp, "library:debian@1:/boot/vmlinuz").unwrap(),
            kernel_one
        );
        assert_eq!(
            tftp_get(tftp, "\\library:debian:\\boot\\initrd.img").unwrap(),
            initrd
        );
        // The whole version, and a range of it.
        assert_eq!(curl(&format!("{http}/library:debian@1")), iso_one);
        assert_eq!(
            curl(&format!("-r 32768-33791 {http}/library:debian@1")),
            iso_one[32768..33792]
        );

        // The rule's script names the daemon's own URLs for the pinned version.
        let script =
            String::from_utf8(curl(&format!("{http}/boot.ipxe?mac=52-54-00-00-00-01"))).unwrap();
        let pinned = kernel_url(&script);
        assert_eq!(pinned, format!("{http}/library:debian@1:/boot/vmlinuz"));
        assert!(
            script.contains(&format!("initrd {http}/library:debian@1:/boot/initrd.img")),
            "{script}"
        );
        assert_eq!(curl(&pinned), kernel_one);

        // Missing items and files are "not found"; a bad spec is refused.
        assert_eq!(
            curl_status(&format!("{http}/library:nosuch:/boot/vmlinuz")),
            404
        );
        assert_eq!(
            curl_status(&format!("{http}/library:debian:/boot/none")),
            404
        );
        assert_eq!(
            curl_status(&format!("{http}/library:debian@9:/boot/vmlinuz")),
            404
        );
        assert_eq!(
            curl_status(&format!("{http}/library:debian@x:/boot/vmlinuz")),
            403
        );
        assert_eq!(
            tftp_get(tftp, "library:nosuch:/boot/vmlinuz")
                .unwrap_err()
                .0,
            TFTP_FILE_NOT_FOUND
        );

        // Version 2 becomes current.
        let library_for_add = library.clone();
        let dir_path = dir.path().to_path_buf();
        let kernel = kernel_two.clone();
        tokio::task::spawn_blocking(move || {
            add_version(&library_for_add, &dir_path, "two", &kernel)
        })
        .await
        .unwrap();
        let current = format!("{http}/library:debian:/boot/vmlinuz");
        let deadline = Instant::now() + Duration::from_secs(10);
        while curl(&current) != kernel_two {
            assert!(
                Instant::now() < deadline,
                "library:debian did not follow version 2"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            tftp_get(tftp, "library:debian:/boot/vmlinuz").unwrap(),
            kernel_two
        );
        let follows =
            String::from_utf8(curl(&format!("{http}/boot.ipxe?mac=52:54:00:00:00:02"))).unwrap();
        assert_eq!(curl(&kernel_url(&follows)), kernel_two);
        // The pinned rule and paths still give version 1.
        assert_eq!(curl(&pinned), kernel_one);
        assert_eq!(
            tftp_get(tftp, "library:debian@1:/boot/vmlinuz").unwrap(),
            kernel_one
        );
        assert_eq!(curl(&format!("{http}/library:debian@1")), iso_one);
        assert_eq!(
            tftp_get(tftp, "library:debian@2:/boot/vmlinuz").unwrap(),
            kernel_two
        );

        server.shutdown().await.unwrap();
    });
}

#[test]
fn a_server_without_a_library_refuses_library_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        root: dir.path().to_path_buf(),
        listen: Ipv4Addr::LOCALHOST,
        interface: None,
        server_ip: None,
        dhcp: DhcpConfig::Off,
        tftp_port: Some(0),
        http_port: Some(0),
        bios_bootfile: None,
        uefi_bootfile: None,
        arm64_bootfile: None,
        ipxe_script: None,
        rules_file: None,
    };
    runtime().block_on(async {
        let server = Server::start(config).await.unwrap();
        let bound = server.bound().clone();
        let http = format!("http://{}", bound.http.unwrap());
        assert_eq!(
            curl_status(&format!("{http}/library:debian:/boot/vmlinuz")),
            403
        );
        let (code, message) =
            tftp_get(bound.tftp.unwrap(), "library:debian:/boot/vmlinuz").unwrap_err();
        assert_eq!(code, TFTP_ACCESS_VIOLATION);
        assert!(message.contains("no library"), "{message}");
        server.shutdown().await.unwrap();
    });
}

#[test]
fn netboot_file_settings_map_to_the_netboot_server_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nb.toml");
    std::fs::write(
        &file,
        "[server]\nroot = \"srv\"\ndhcp = \"full\"\ninterface = \"br0\"\ndhcp_range = \"10.0.0.100-10.0.0.200\"\ndns = [\"10.0.0.1\"]\ntftp_port = 0\nipxe_script = \"boot.tmpl\"\n\n[default]\nkernel = \"library:debian:/k\"\n",
    )
    .unwrap();
    let config = load_netboot_config(&file).unwrap();
    assert_eq!(config.root, dir.path().join("srv"));
    assert_eq!(config.tftp_port, None);
    assert_eq!(config.http_port, Some(80));
    assert_eq!(config.listen, Ipv4Addr::UNSPECIFIED);
    assert_eq!(config.rules_file.as_deref(), Some(file.as_path()));
    assert_eq!(
        config.ipxe_script.as_deref(),
        Some(dir.path().join("boot.tmpl").to_str().unwrap())
    );
    match config.dhcp {
        DhcpConfig::Full {
            first,
            last,
            dns,
            lease_secs,
            lease_file,
            ..
        } => {
            assert_eq!(first, Ipv4Addr::new(10, 0, 0, 100));
            assert_eq!(last, Ipv4Addr::new(10, 0, 0, 200));
            assert_eq!(dns, [Ipv4Addr::new(10, 0, 0, 1)]);
            assert_eq!(lease_secs, 3600);
            assert_eq!(lease_file, Some(dir.path().join("vmedia-leases.json")));
        }
        other => panic!("not full DHCP: {other:?}"),
    }

    std::fs::write(&file, "[default]\nkernel = \"k\"\n").unwrap();
    assert!(matches!(
        load_netboot_config(&file),
        Err(NetbootStartError::Config { .. })
    ));
    std::fs::write(&file, "[server]\nroot = \"srv\"\nroute = \"x\"\n").unwrap();
    let err = load_netboot_config(&file).unwrap_err();
    assert!(err.to_string().contains("route"), "{err}");
    std::fs::write(
        &file,
        "[server]\nroot = \"srv\"\ndhcp_range = \"1.1.1.1-1.1.1.2\"\n",
    )
    .unwrap();
    assert!(load_netboot_config(&file).is_err());
}

/// The daemon's netboot server with per-item access: `secret` is limited by an access rule,
/// so it is never served over TFTP or the netboot HTTP port (not found, audited), a rules file
/// naming it is refused before anything starts, and `debian` is served as before.
#[test]
fn restricted_items_are_never_served_by_netboot_and_rules_naming_them_are_refused() {
    use std::sync::Arc;
    use vmedia_server::api::access::{AccessList, ACCESS_FILE};
    use vmedia_server::audit::AuditLog;
    use vmedia_server::cache::{CacheOptions, SharedCache};
    use vmedia_server::http::gate::MediaGate;

    let dir = tempfile::tempdir().unwrap();
    let library = Library::init(
        &OpenConfig::folder(dir.path().join("library"), "tester@host"),
        &InitOptions::default(),
    )
    .unwrap();
    let kernel = pattern(3, KERNEL_LEN);
    let iso = add_version(&library, dir.path(), "one", &kernel);
    let iso_path = dir.path().join("secret.iso");
    std::fs::write(&iso_path, &iso).unwrap();
    library
        .add(
            "secret",
            AddSource::File(iso_path),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(
        state.join(ACCESS_FILE),
        r#"{"rules":[{"pattern":"secret","users":["alice"]}]}"#,
    )
    .unwrap();
    let access = Arc::new(AccessList::open(&state).unwrap());
    let audit = Arc::new(AuditLog::open(&state).unwrap());
    let gate = Arc::new(MediaGate::open(&state, access, audit).unwrap());
    let cache = || -> Arc<dyn vmedia_library::ChunkCache> {
        Arc::new(
            SharedCache::new(&CacheOptions {
                memory_bytes: 16 << 20,
                disk: None,
            })
            .unwrap(),
        )
    };
    let root = dir.path().join("boot-root");
    std::fs::create_dir(&root).unwrap();
    let (tftp_port, http_port) = free_ports();
    let server_table = format!(
        "[server]\nroot = \"boot-root\"\nlisten = \"127.0.0.1\"\ntftp_port = {tftp_port}\nhttp_port = {http_port}\n"
    );
    let refused = dir.path().join("refused.toml");
    std::fs::write(
        &refused,
        format!("{server_table}[default]\nkernel = \"library:secret@1:/boot/vmlinuz\"\n"),
    )
    .unwrap();
    let config = dir.path().join("netboot.toml");
    std::fs::write(
        &config,
        format!("{server_table}[default]\nkernel = \"library:debian@1:/boot/vmlinuz\"\n"),
    )
    .unwrap();

    runtime().block_on(async {
        // A rules file naming the restricted item: refused with what to do, nothing bound.
        let error = start_netboot_gated(&refused, library.clone(), cache(), Arc::clone(&gate))
            .await
            .err()
            .expect("a rules file naming a restricted item was accepted");
        assert!(
            matches!(&error, NetbootStartError::Restricted { item, .. } if item == "secret"),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("library:secret@1:/boot/vmlinuz") && message.contains("remove"),
            "{message}"
        );

        let server = start_netboot_gated(&config, library.clone(), cache(), Arc::clone(&gate))
            .await
            .unwrap();
        let bound = server.bound().clone();
        let tftp = bound.tftp.unwrap();
        let http = format!("http://{}", bound.http.unwrap());
        // The unrestricted item as before.
        assert_eq!(
            curl(&format!("{http}/library:debian@1:/boot/vmlinuz")),
            kernel
        );
        assert_eq!(
            tftp_get(tftp, "library:debian:/boot/vmlinuz").unwrap(),
            kernel
        );
        // The restricted one, asked for by name: missing on both protocols.
        for path in ["library:secret@1:/boot/vmlinuz", "library:secret"] {
            assert_eq!(curl_status(&format!("{http}/{path}")), 404, "{path}");
            assert_eq!(
                tftp_get(tftp, path).unwrap_err().0,
                TFTP_FILE_NOT_FOUND,
                "{path}"
            );
        }
        server.shutdown().await.unwrap();
    });
    let log = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    let denied = log
        .lines()
        .filter(|line| line.contains("netboot open library:secret") && line.contains("denied"))
        .count();
    assert!(denied >= 4, "{log}");
}
