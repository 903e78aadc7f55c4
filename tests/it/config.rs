//! Configuration as a user meets it through the `stackd` binary: the example file, the order
//! in which a file, environment variables and flags override each other, and bad values
//! refused at start-up with the setting named.

use node::config::Config;
use tempfile::TempDir;
use tests::process::stackd_with_env;

#[test]
fn the_printed_example_parses_to_exactly_the_defaults() {
    let (ok, example, stderr) = stackd_with_env(&["config", "example"], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(Config::from_toml(&example).unwrap(), Config::default());
    assert!(example.contains("[raft]\n"), "{example}");
    assert!(
        example.contains("\nheartbeat_interval_ms = 100\n"),
        "{example}"
    );
    assert!(
        example.contains(
            "# Flag: --heartbeat-interval-ms; environment: STACKD_HEARTBEAT_INTERVAL_MS."
        ),
        "{example}"
    );
}

#[test]
fn flags_override_the_environment_which_overrides_the_file_which_overrides_defaults() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("stackd.toml");
    std::fs::write(
        &file,
        "[storage]\n\
         data_dir = \"/from/file\"\n\
         [raft]\n\
         heartbeat_interval_ms = 50\n\
         election_timeout_ms = 400\n\
         snapshot_every_entries = 500\n\
         [limits]\n\
         kv_history_revisions = 123\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (ok, shown, stderr) = stackd_with_env(
        &[
            "config",
            "show",
            "--snapshot-every-entries",
            "800",
            "--data-dir",
            "/from/flag",
        ],
        &[
            ("STACKD_CONFIG", file),
            ("STACKD_ELECTION_TIMEOUT_MS", "600"),
            ("STACKD_SNAPSHOT_EVERY_ENTRIES", "700"),
            ("STACKD_DATA_DIR", "/from/env"),
        ],
    );
    assert!(ok, "{stderr}");
    let mut expected = Config::default();
    expected.storage.data_dir = Some("/from/flag".into()); // file, env and flag: the flag
    expected.raft.heartbeat_interval_ms = 50; // file only
    expected.raft.election_timeout_ms = 600; // file and env: the env
    expected.raft.snapshot_every_entries = 800; // file, env and flag: the flag
    expected.limits.kv_history_revisions = 123; // file only
    assert_eq!(Config::from_toml(&shown).unwrap(), expected, "{shown}");

    // Without the flags, the environment wins over the file.
    let (ok, shown, stderr) = stackd_with_env(
        &["config", "show", "--config", file],
        &[("STACKD_SNAPSHOT_EVERY_ENTRIES", "700")],
    );
    assert!(ok, "{stderr}");
    let c = Config::from_toml(&shown).unwrap();
    assert_eq!(c.raft.snapshot_every_entries, 700);
    assert_eq!(c.storage.data_dir, Some("/from/file".into()));
}

#[test]
fn serve_with_a_bad_value_exits_naming_the_setting_and_starts_nothing() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    // A flag.
    let (ok, _, stderr) = stackd_with_env(
        &["serve", "--data-dir", data, "--election-timeout-ms", "150"],
        &[],
    );
    assert!(!ok, "a bad election timeout must stop the node");
    for name in [
        "raft.election_timeout_ms",
        "--election-timeout-ms",
        "STACKD_ELECTION_TIMEOUT_MS",
        "more than twice raft.heartbeat_interval_ms (100)",
    ] {
        assert!(stderr.contains(name), "{stderr}");
    }

    // An environment variable.
    let (ok, _, stderr) = stackd_with_env(
        &["serve", "--data-dir", data],
        &[("STACKD_TARGET_VOTERS", "4")],
    );
    assert!(!ok);
    assert!(stderr.contains("raft.target_voters"), "{stderr}");
    assert!(stderr.contains("must be 3 or 5, not 4"), "{stderr}");

    // A file with a setting that does not exist.
    let file = dir.path().join("stackd.toml");
    std::fs::write(&file, "[raft]\nheartbeat_ms = 50\n").unwrap();
    let (ok, _, stderr) = stackd_with_env(
        &[
            "serve",
            "--data-dir",
            data,
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("unknown setting `raft.heartbeat_ms`"),
        "{stderr}"
    );

    assert!(
        !std::path::Path::new(data).exists(),
        "a refused config starts nothing, not even the data dir"
    );
}
