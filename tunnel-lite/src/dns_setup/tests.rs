use super::*;
use crate::addr::DNS_DEFAULT;
use std::sync::atomic::{AtomicUsize, Ordering};

const BINARY: &str = "/usr/local/bin/tunnel-lite";

fn addrs() -> Vec<Ipv4Addr> {
    vec![
        Ipv4Addr::new(127, 77, 2, 20),
        Ipv4Addr::new(127, 77, 1, 10),
        Ipv4Addr::new(127, 77, 2, 20),
    ]
}

fn strings(args: &[&str]) -> Vec<String> {
    argv(args)
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tunnel-lite-dns-setup-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn linux_plan() {
    let p = plan(
        Os::Linux,
        "hoop",
        DNS_DEFAULT,
        &addrs(),
        Path::new(BINARY),
        false,
    );
    assert_eq!(
        p.files,
        [(
            PathBuf::from("/etc/systemd/resolved.conf.d/hoop.conf"),
            "[Resolve]\nDNS=127.77.0.53\nDomains=~hoop\n".to_string()
        )]
    );
    assert_eq!(
        p.commands,
        [strings(&["systemctl", "restart", "systemd-resolved"])]
    );
    assert!(p.notes.iter().any(|n| n.contains("need no alias")));
    assert!(p.notes.iter().any(|n| n.contains("port 53 is below 1024")));
}

#[test]
fn linux_plan_with_port_and_low_ports() {
    let dns = SocketAddrV4::new(Ipv4Addr::new(127, 77, 0, 53), 5353);
    let p = plan(
        Os::Linux,
        "Corp.Hoop.",
        dns,
        &addrs(),
        Path::new(BINARY),
        true,
    );
    assert_eq!(
        p.files,
        [(
            PathBuf::from("/etc/systemd/resolved.conf.d/corp.hoop.conf"),
            "[Resolve]\nDNS=127.77.0.53:5353\nDomains=~corp.hoop\n".to_string()
        )]
    );
    assert_eq!(
        p.commands,
        [
            strings(&["systemctl", "restart", "systemd-resolved"]),
            strings(&["setcap", "cap_net_bind_service=+ep", BINARY]),
        ]
    );
    assert!(p.notes.iter().any(|n| n.contains("systemd 246")));
}

#[test]
fn macos_plan() {
    let p = plan(
        Os::MacOs,
        "hoop",
        DNS_DEFAULT,
        &addrs(),
        Path::new(BINARY),
        true,
    );
    assert_eq!(
        p.files,
        [(
            PathBuf::from("/etc/resolver/hoop"),
            "nameserver 127.77.0.53\nport 53\n".to_string()
        )]
    );
    assert_eq!(
        p.commands,
        [
            strings(&["ifconfig", "lo0", "alias", "127.77.0.53", "up"]),
            strings(&["ifconfig", "lo0", "alias", "127.77.1.10", "up"]),
            strings(&["ifconfig", "lo0", "alias", "127.77.2.20", "up"]),
        ]
    );
    assert!(p.notes.iter().any(|n| n.contains("Mojave")));
    assert!(!p.commands.iter().flatten().any(|a| a == "setcap"));
}

#[test]
fn macos_plan_skips_addresses_outside_the_block() {
    let dns = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5300);
    let outside = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(127, 77, 1, 10)];
    let p = plan(Os::MacOs, "hoop", dns, &outside, Path::new(BINARY), false);
    assert_eq!(p.files[0].1, "nameserver 127.0.0.1\nport 5300\n");
    assert_eq!(
        p.commands,
        [strings(&["ifconfig", "lo0", "alias", "127.77.1.10", "up"])]
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.starts_with("1 address(es) outside")));
}

#[test]
fn invalid_suffix_plans_nothing() {
    for bad in [
        "",
        ".",
        "../etc/passwd",
        "a/b",
        "-x",
        "x-",
        "a..b",
        "hoop sp",
    ] {
        assert!(!is_valid_suffix(bad), "{bad:?}");
        let p = plan(Os::Linux, bad, DNS_DEFAULT, &[], Path::new(BINARY), true);
        assert!(p.files.is_empty() && p.commands.is_empty(), "{bad:?}");
        assert!(p.notes[0].starts_with("error: suffix"));
    }
    for good in ["hoop", "hoop.", "corp.hoop", "x1-y", &"a".repeat(63)] {
        assert!(is_valid_suffix(good), "{good:?}");
    }
    assert!(!is_valid_suffix(&"a".repeat(64)));
}

#[test]
fn render_exact() {
    let p = DnsSetupPlan {
        files: vec![(
            PathBuf::from("/etc/resolver/hoop"),
            "nameserver 127.77.0.53\nport 53\n".into(),
        )],
        commands: vec![strings(&["ifconfig", "lo0", "alias", "127.77.0.53", "up"])],
        notes: vec!["a note".into()],
    };
    assert_eq!(
        render(&p),
        "Files to write:\n\
         \x20 /etc/resolver/hoop\n\
         \x20   why: a macOS per-domain resolver routing the suffix (and only it) to tunnel-lite\n\
         \x20   | nameserver 127.77.0.53\n\
         \x20   | port 53\n\
         Commands to run:\n\
         \x20 $ ifconfig lo0 alias 127.77.0.53 up\n\
         \x20   why: macOS routes only 127.0.0.1 on lo0; tunnel-lite listens here\n\
         Notes:\n\
         \x20 - a note\n"
    );
    assert_eq!(
        render(&DnsSetupPlan::default()),
        "Nothing to write or run.\n"
    );
}

#[test]
fn render_linux_plan_shows_content_commands_and_notes() {
    let p = plan(
        Os::Linux,
        "hoop",
        DNS_DEFAULT,
        &addrs(),
        Path::new("/opt/my tl"),
        true,
    );
    let text = render(&p);
    assert!(
        text.contains("  /etc/systemd/resolved.conf.d/hoop.conf\n"),
        "{text}"
    );
    assert!(text.contains("    | [Resolve]\n    | DNS=127.77.0.53\n    | Domains=~hoop\n"));
    assert!(text.contains("  $ systemctl restart systemd-resolved\n"));
    assert!(text.contains("  $ setcap cap_net_bind_service=+ep '/opt/my tl'\n"));
    assert!(text.contains("Notes:\n  - systemd-resolved sends only *.hoop queries"));
}

#[test]
fn apply_linux_under_temp_root_writes_files_and_skips_restart() {
    let root = TempRoot::new("linux");
    let p = plan(
        Os::Linux,
        "hoop",
        DNS_DEFAULT,
        &addrs(),
        Path::new(BINARY),
        false,
    );
    for _ in 0..2 {
        // Twice: re-applying replaces the file.
        let log = apply(&p, &root.0).unwrap();
        let written = root.0.join("etc/systemd/resolved.conf.d/hoop.conf");
        assert_eq!(
            std::fs::read_to_string(&written).unwrap(),
            "[Resolve]\nDNS=127.77.0.53\nDomains=~hoop\n"
        );
        assert_eq!(log[0], format!("wrote {}", written.display()));
        assert!(log[1].starts_with("skipped (root is "), "{log:?}");
        assert!(log[1].ends_with(": systemctl restart systemd-resolved"));
        assert_eq!(log.len(), 2);
    }
    let dir = root.0.join("etc/systemd/resolved.conf.d");
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn apply_macos_under_temp_root_writes_resolver_and_skips_aliases() {
    let root = TempRoot::new("macos");
    let p = plan(
        Os::MacOs,
        "hoop",
        DNS_DEFAULT,
        &addrs(),
        Path::new(BINARY),
        false,
    );
    let log = apply(&p, &root.0).unwrap();
    let content = std::fs::read_to_string(root.0.join("etc/resolver/hoop")).unwrap();
    assert_eq!(content, "nameserver 127.77.0.53\nport 53\n");
    assert_eq!(log.iter().filter(|l| l.starts_with("skipped")).count(), 3);
}

/// Whether this process may set file capabilities (CAP_SETFCAP in CapEff).
fn can_setfcap() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 31) != 0)
}

#[cfg(target_os = "linux")]
#[test]
fn apply_runs_setcap_on_a_binary_inside_the_temp_root() {
    let root = TempRoot::new("setcap");
    let binary = root.0.join("bin/tunnel-lite");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::write(&binary, b"#!/bin/sh\nexit 0\n").unwrap();
    let p = plan(Os::Linux, "hoop", DNS_DEFAULT, &[], &binary, true);
    let result = apply(&p, &root.0);
    let setcap = format!("setcap cap_net_bind_service=+ep {}", binary.display());
    if can_setfcap() && resolve_program("setcap").is_some() {
        let log = result.unwrap();
        assert_eq!(log.last().unwrap(), &format!("ran: {setcap}"));
        assert!(log[1].ends_with("systemctl restart systemd-resolved"));
    } else {
        let message = result.unwrap_err().to_string();
        assert!(message.contains(&setcap), "{message}");
    }
}

#[test]
fn a_failing_command_names_itself_and_its_stderr() {
    let root = TempRoot::new("fail");
    let missing = root.0.join("no-such-binary");
    let p = plan(Os::Linux, "hoop", DNS_DEFAULT, &[], &missing, true);
    let err = apply(&p, &root.0).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&format!(
        "`setcap cap_net_bind_service=+ep {}`",
        missing.display()
    )));
    match err {
        DnsSetupError::Failed { stderr, .. } => assert!(!stderr.is_empty()),
        DnsSetupError::NotFound { program, .. } => assert_eq!(program, "setcap"),
        other => panic!("unexpected {other:?}"),
    }
    // The files were written before the failing command.
    assert!(root
        .0
        .join("etc/systemd/resolved.conf.d/hoop.conf")
        .is_file());
}

#[test]
fn apply_refuses_paths_escaping_the_root() {
    let root = TempRoot::new("escape");
    for bad in ["relative/file", "/etc/../../outside", "/"] {
        let p = DnsSetupPlan {
            files: vec![(PathBuf::from(bad), "x".into())],
            ..DnsSetupPlan::default()
        };
        assert!(
            matches!(apply(&p, &root.0), Err(DnsSetupError::BadPath(_))),
            "{bad}"
        );
    }
}

#[test]
fn empty_command_is_an_error_and_programs_resolve_to_absolute_paths() {
    let p = DnsSetupPlan {
        commands: vec![vec![]],
        ..DnsSetupPlan::default()
    };
    assert!(matches!(
        apply(&p, Path::new("/")),
        Err(DnsSetupError::EmptyCommand)
    ));
    let sh = resolve_program("sh").unwrap();
    assert!(sh.is_absolute() && sh.ends_with("sh"));
    assert_eq!(resolve_program("no-such-program-tunnel-lite"), None);
    assert_eq!(resolve_program("relative/sh"), None);
}

#[test]
fn detects_this_os() {
    let expected = if cfg!(target_os = "macos") {
        Os::MacOs
    } else {
        Os::Linux
    };
    assert_eq!(detect_os(), expected);
}
