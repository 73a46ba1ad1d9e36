//! The threads of a running launcher are the ones docs/ARCHITECTURE.md
//! lists, by name: the main thread (the event loop), one per vCPU, one
//! per started virtqueue. The test reads the doc's "Threads" table, so the
//! doc cannot drift from the code.

mod common;

use common::{test_guest, Guest};

use common::TIMEOUT;

/// The thread names in the first column of ARCHITECTURE.md's "Threads"
/// table, `<...>` parts as wildcards.
fn documented() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ARCHITECTURE.md"))
        .expect("read docs/ARCHITECTURE.md");
    let table = doc
        .split_once("## Threads")
        .map(|(_, rest)| rest)
        .expect("a Threads section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|name| !name.contains(' '))
        .collect()
}

/// Whether `name` matches `pattern`, where `<...>` stands for any text.
fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern
        .split('<')
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                p
            } else {
                p.split_once('>').map_or(p, |(_, rest)| rest)
            }
        })
        .collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.len() >= part.len() && rest.ends_with(part) && !rest.is_empty();
        } else {
            match rest.find(part) {
                Some(at) if at > 0 => rest = &rest[at + part.len()..],
                _ => return false,
            }
        }
    }
    parts.len() == 1 && rest.is_empty()
}

#[test]
fn the_running_threads_are_the_documented_ones() {
    let patterns = documented();
    assert!(
        patterns.iter().any(|p| p == "launcher") && patterns.iter().any(|p| p.contains("-q<")),
        "the Threads table lost its rows: {patterns:?}"
    );
    let elf = test_guest::path();
    let mut g = Guest::start(&["--rng", "16", elf.to_str().unwrap(), "scenario=devices-up"]);
    g.wait_for("GUEST-WAITING", TIMEOUT);
    let task = format!("/proc/{}/task", g.pid());
    let read_names = || {
        let mut names: Vec<String> = std::fs::read_dir(&task)
            .unwrap_or_else(|e| panic!("{task}: {e}"))
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim_end().to_string())
            // The host kernel's own thread may or may not be there.
            .filter(|n| n != "kvm-nx-lpage-re")
            .collect();
        names.sort();
        names
    };
    // The console is always in slot 1, --rng next; both queues of the
    // console and the rng's one are started.
    let expected = [
        "console-01-q0",
        "console-01-q1",
        "console-out",
        "launcher",
        "rng-02-q0",
        "vcpu0",
    ];
    // A thread names itself once it runs: until then it carries its
    // creator's name (a queue worker shows as "vcpu0" for a moment, longer
    // on a loaded host). So wait, bounded, for the names to settle.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut names = read_names();
    while names != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        names = read_names();
    }
    for n in &names {
        assert!(
            patterns.iter().any(|p| matches(p, n)),
            "thread {n:?} is not in docs/ARCHITECTURE.md's table {patterns:?}"
        );
    }
    assert_eq!(names, expected, "{}", g.output());
}

#[test]
fn wildcards_match_as_documented() {
    assert!(matches("<dev>-<slot>-q<N>", "rng-02-q0"));
    assert!(matches("launcher", "launcher"));
    assert!(!matches("launcher", "launcher2"));
    assert!(!matches("<dev>-<slot>-q<N>", "stdin"));
    assert!(matches("<dev>-<slot>-kick", "console-01-kick"));
    assert!(!matches("<dev>-<slot>-kick", "console-01-q0"));
}
