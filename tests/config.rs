//! The binary's configuration: precedence, `.env`, and start-up failures.

use std::process::Command;

fn proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_srs-proxy"));
    // Only what each test sets: no PROXY_* from the environment running the tests.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PROXY_")) {
        cmd.env_remove(k);
    }
    cmd
}

fn effective(out: &std::process::Output) -> serde_yaml::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_yaml::from_slice(&out.stdout).expect("--check-config prints YAML")
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.yaml");
    std::fs::write(
        &file,
        "http_server: 1001\nrtmp_server: 1002\nsystem_api: 1003\nredis:\n  prefix: \"file:\"\norigins:\n  - ip: 10.0.0.9\n    rtmp: 1935\n    http: 8080\n",
    )
    .unwrap();
    let out = proxy()
        .current_dir(dir.path())
        .args([
            "--config",
            file.to_str().unwrap(),
            "--check-config",
            "--system-api",
            "127.0.0.1:3003",
        ])
        .args(["--set", "redis.timeout=250ms"])
        .env("PROXY_RTMP_SERVER", "2002")
        .env("PROXY_SYSTEM_API", "2003")
        .output()
        .unwrap();
    let c = effective(&out);
    assert_eq!(c["http_server"], "0.0.0.0:1001", "file over default");
    assert_eq!(c["rtmp_server"], "0.0.0.0:2002", "env over file");
    assert_eq!(c["system_api"], "127.0.0.1:3003", "flag over env");
    assert_eq!(c["http_api"], "0.0.0.0:11985", "default");
    assert_eq!(c["redis"]["prefix"], "file:");
    assert_eq!(c["redis"]["timeout"], "250ms");
    assert_eq!(c["origins"][0]["ip"], "10.0.0.9");
}

#[test]
fn dot_env_in_the_working_directory_is_read_but_real_env_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PROXY_SYSTEM_API=4444\nPROXY_HTTP_SERVER=5555\n",
    )
    .unwrap();
    let out = proxy()
        .current_dir(dir.path())
        .arg("--check-config")
        .env("PROXY_HTTP_SERVER", "6666")
        .output()
        .unwrap();
    let c = effective(&out);
    assert_eq!(c["system_api"], "0.0.0.0:4444");
    assert_eq!(c["http_server"], "0.0.0.0:6666");
}

#[test]
fn a_bad_value_stops_start_up_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    for (env, value, needle) in [
        ("PROXY_HTTP_SERVER", "http", "http_server"),
        ("PROXY_REDIS_PORT", "sixty", "PROXY_REDIS_PORT"),
        ("PROXY_GRACE_QUIT_TIMEOUT", "10 parsecs", "grace_quit_timeout"),
        ("PROXY_LOAD_BALANCER_TYPE", "etcd", "load_balancer_type"),
        ("PROXY_DEFAULT_BACKEND_ENABLED", "maybe", "default_backend.enabled"),
    ] {
        // Without --check-config: a real start-up that must not start.
        let out = proxy().current_dir(dir.path()).env(env, value).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{env}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle) && stderr.contains(value),
            "{env}={value}: {stderr}"
        );
    }
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "http_sever: 1\n").unwrap();
    let out = proxy().args(["--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_sever"));
    let out = proxy()
        .args(["--set", "nonsense=1", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}

#[test]
fn bearer_settings_are_checked_like_the_go_proxy_and_the_token_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = proxy();
        cmd.current_dir(dir.path()).arg("--check-config");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for (env, needle) in [
        (vec![("PROXY_HTTP_API_AUTH_ENABLED", "on")], "PROXY_HTTP_API_AUTH_TYPE"),
        (
            vec![
                ("PROXY_HTTP_API_AUTH_ENABLED", "on"),
                ("PROXY_HTTP_API_AUTH_TYPE", "bearer"),
            ],
            "PROXY_HTTP_API_AUTH_TOKEN",
        ),
        (
            vec![
                ("PROXY_HTTP_API_AUTH_ENABLED", "on"),
                ("PROXY_HTTP_API_AUTH_TYPE", "basic"),
                ("PROXY_HTTP_API_AUTH_TOKEN", "t"),
            ],
            "only supports bearer",
        ),
        (
            vec![
                ("PROXY_HTTP_API_AUTH_ENABLED", "on"),
                ("PROXY_HTTP_API_AUTH_TYPE", "bearer"),
                ("PROXY_HTTP_API_AUTH_TOKEN_FILE", "/nonexistent/token"),
            ],
            "http_api_auth.token_file",
        ),
    ] {
        let out = run(&env);
        assert_eq!(out.status.code(), Some(64), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{env:?}: {stderr}");
    }

    let secret = "tok-3f1e9c2b7d";
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    for env in [
        vec![
            ("PROXY_HTTP_API_AUTH_ENABLED", "on"),
            ("PROXY_HTTP_API_AUTH_TYPE", "bearer"),
            ("PROXY_HTTP_API_AUTH_TOKEN", secret),
        ],
        vec![
            ("PROXY_HTTP_API_AUTH_ENABLED", "on"),
            ("PROXY_HTTP_API_AUTH_TYPE", "Bearer"),
            ("PROXY_HTTP_API_AUTH_TOKEN_FILE", file.to_str().unwrap()),
        ],
    ] {
        let out = run(&env);
        let c = effective(&out);
        assert_eq!(c["http_api_auth"]["enabled"], true);
        assert_eq!(c["http_api_auth"]["token"], "***");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "the token was printed: {all}");
    }
}
