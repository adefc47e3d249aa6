//! Route authentication end to end: JWTs of every supported algorithm
//! signed by the tests' own keys, API keys and htpasswd users, against the
//! real binary and a recording backend. A refused request gets 401 with a
//! challenge and never reaches the backend; headers the proxy writes for
//! the caller cannot be forged; the files reload on SIGHUP under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use ringgate_tests::jws::{self, b64std, b64url, hs256_with_secret, jwks, now, TestKey};
use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, Response};

/// A fresh directory for one test's key files.
fn dir(name: &str) -> PathBuf {
    let d = ringgate_tests::proxy::temp_path(name, "d");
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// One listener, one upstream, and a route per `(prefix, auth, extra)`.
fn config(port: u16, backend: SocketAddr, routes: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "[server]\nworkers = 2\n\n[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{port}\"\n"
    );
    for (prefix, auth, extra) in routes {
        s += &format!(
            "\n[[routes]]\nlistener = \"web\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"app\"\nauth = {auth}\n{extra}\n"
        );
    }
    s += &format!("\n[[upstreams]]\nname = \"app\"\nbackends = [{{ address = \"{backend}\" }}]\n");
    s
}

fn get(port: u16, path: &str, headers: &str) -> Response {
    Client::connect(port)
        .request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes())
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn claims(sub: &str, extra: &str) -> String {
    format!(
        r#"{{"sub":"{sub}","iss":"https://id.test","aud":["api","other"],"exp":{},"tier":"gold"{extra}}}"#,
        now() + 300
    )
}

#[test]
fn jwt_corpus_valid_tokens_pass_with_their_claims_and_bad_ones_never_reach_the_backend() {
    let d = dir("ringgate-jwt");
    let keys = [
        TestKey::hmac("HS256", "hs256"),
        TestKey::hmac("HS384", "hs384"),
        TestKey::hmac("HS512", "hs512"),
        TestKey::rsa("RS256", "rs256", &d),
        TestKey::rsa("PS256", "ps256", &d),
        TestKey::ec("ES256", "es256"),
        TestKey::ec("ES384", "es384"),
        TestKey::ed25519("ed"),
    ];
    let refs: Vec<&TestKey> = keys.iter().collect();
    let jwks_path = write(&d, "jwks.json", &jwks(&refs));
    let backend = Backend::start("b", Behaviour::Ok);
    let port = ringgate_tests::free_port();
    let auth = format!(
        r#"{{ jwt = {{ keys = "{jwks_path}", issuer = "https://id.test", audiences = ["api"], leeway = "30s", claims_to_headers = {{ tier = "x-tier", sub = "x-user" }} }}, consumer_header = "x-consumer" }}"#
    );
    let admin = ringgate_tests::free_port();
    let text = config(port, backend.addr(), &[("/", &auth, "")])
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let proxy = Proxy::start(&text);

    for key in &keys {
        let path = format!("/ok/{}", key.alg);
        let r = get(port, &path, &bearer(&key.sign(&claims(key.alg, ""))));
        assert_eq!(r.status, 200, "{}: {}", key.alg, r.body_str());
        let rec = backend
            .records()
            .into_iter()
            .find(|r| r.target == path)
            .unwrap_or_else(|| panic!("{path} reached the backend"));
        assert_eq!(rec.header("x-user").as_deref(), Some(key.alg));
        assert_eq!(rec.header("x-consumer").as_deref(), Some(key.alg));
        assert_eq!(rec.header("x-tier").as_deref(), Some("gold"));
    }

    let es = &keys[5];
    let rs = &keys[3];
    let good = es.sign(&claims("alice", ""));
    let exp_claims =
        |exp: u64| format!(r#"{{"sub":"a","iss":"https://id.test","aud":"api","exp":{exp}}}"#);
    let corpus: Vec<(&str, String)> = vec![
        (
            "alg-none",
            format!(
                "{}.{}.",
                b64url(br#"{"alg":"none","typ":"JWT","kid":"es256"}"#),
                b64url(claims("root", "").as_bytes())
            ),
        ),
        (
            "hs256-with-rsa-public-key",
            hs256_with_secret(&rs.public_der, "rs256", &claims("root", "")),
        ),
        ("expired", es.sign(&exp_claims(now() - 120))),
        (
            "future-nbf",
            es.sign(&claims("alice", &format!(r#","nbf":{}"#, now() + 600))),
        ),
        (
            "wrong-issuer",
            es.sign(&claims("alice", "").replace("https://id.test", "https://evil.test")),
        ),
        (
            "wrong-audience",
            es.sign(&claims("alice", "").replace(r#"["api","other"]"#, r#""nobody""#)),
        ),
        (
            "bad-signature",
            format!(
                "{}{}",
                &good[..good.len() - 4],
                if good.ends_with("AAAA") {
                    "BBBB"
                } else {
                    "AAAA"
                }
            ),
        ),
        ("truncated", good[..good.len() / 2].to_string()),
        (
            "over-8KiB",
            es.sign(&claims(
                "alice",
                &format!(r#","pad":"{}""#, "x".repeat(9000)),
            )),
        ),
        (
            "unknown-kid",
            es.sign_raw(r#"{"alg":"ES256","kid":"nope"}"#, &claims("alice", "")),
        ),
        ("missing", String::new()),
    ];
    for (name, token) in &corpus {
        let path = format!("/bad/{name}");
        let headers = if token.is_empty() {
            String::new()
        } else {
            bearer(token)
        };
        let r = get(port, &path, &headers);
        assert_eq!(r.status, 401, "{name}: {}", r.body_str());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm="),
            "{name}: {challenge:?}"
        );
    }
    thread::sleep(Duration::from_millis(100));
    let leaked: Vec<String> = backend
        .targets()
        .into_iter()
        .filter(|t| t.starts_with("/bad/"))
        .collect();
    assert!(
        leaked.is_empty(),
        "refused requests reached the backend: {leaked:?}"
    );

    // Headers the proxy writes for the caller cannot come from the client.
    // `_` spellings too: a backend that reads `_` as `-` would take them.
    let forged = format!(
        "{}X-Consumer: root\r\nX-User: root\r\nx-tier: platinum\r\nX_Consumer: root\r\nx_user: root\r\n",
        bearer(&good)
    );
    assert_eq!(get(port, "/forged", &forged).status, 200);
    let rec = backend
        .records()
        .into_iter()
        .find(|r| r.target == "/forged")
        .expect("forged");
    assert_eq!(rec.header("x-consumer").as_deref(), Some("alice"));
    assert_eq!(rec.header("x-user").as_deref(), Some("alice"));
    assert_eq!(rec.header("x-tier").as_deref(), Some("gold"));
    assert!(
        rec.headers.iter().all(|(name, _)| !name.contains('_')),
        "a forged identity went up: {:?}",
        rec.headers
    );
    let r = get(port, "/bad/forged-only", "X-Consumer: root\r\n");
    assert_eq!(r.status, 401);
    // A valid token and a second one the proxy would not check.
    let two = format!("{}Authorization: Bearer forged\r\n", bearer(&good));
    assert_eq!(get(port, "/bad/two-tokens", &two).status, 401);

    // Refusals are counted by reason.
    let counted = |reason: &str| format!("ringgate_auth_refusals_total{{reason=\"{reason}\"}} ");
    let metrics = eventually(Duration::from_secs(3), || {
        let body = get(admin, "/metrics", "").body_str();
        [
            ("expired", 1),
            ("not_yet_valid", 1),
            ("wrong_issuer", 1),
            ("wrong_audience", 1),
            ("missing", 2),
            ("too_large", 1),
        ]
        .iter()
        .all(|(reason, n)| body.contains(&format!("{}{n}\n", counted(reason))))
        .then_some(body.clone())
        .ok_or(body)
    })
    .expect("refusals counted by reason");
    assert!(metrics.contains(&counted("bad_signature")), "{metrics}");
    drop(proxy);
}

fn api_keys_file(keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(consumer, key)| {
            format!(
                "[[keys]]\nconsumer = \"{consumer}\"\nsha256 = \"{}\"\n",
                jws::sha256_hex(key.as_bytes())
            )
        })
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        b64std(format!("{user}:{password}").as_bytes())
    )
}

#[test]
fn api_keys_and_basic_users_pass_wrong_ones_get_401_and_file_changes_apply_on_sighup_under_load() {
    let d = dir("ringgate-keys");
    let keys = write(&d, "keys.toml", &api_keys_file(&[("billing", "key-one")]));
    let users_v1 = format!("alice:{}\n", bcrypt::hash("alice-pw", 4).expect("bcrypt"));
    let users = write(&d, "users", &users_v1);
    let backend = Backend::start("b", Behaviour::Ok);
    let port = ringgate_tests::free_port();
    let routes = [
        (
            "/key/",
            format!(
                r#"{{ api_keys = {{ file = "{keys}", header = "x-api-key" }}, consumer_header = "x-consumer" }}"#
            ),
            String::new(),
        ),
        (
            "/query/",
            format!(
                r#"{{ api_keys = {{ file = "{keys}", query = "api_key" }}, consumer_header = "x-consumer" }}"#
            ),
            String::new(),
        ),
        (
            "/basic/",
            format!(
                r#"{{ basic = {{ htpasswd = "{users}" }}, consumer_header = "x-consumer", realm = "staff" }}"#
            ),
            // Per-consumer limit, far above the test's rate: the key works.
            r#"rate_limit = { key = "consumer", rate = "100000/s" }"#.to_string(),
        ),
    ];
    let routes: Vec<(&str, &str, &str)> = routes
        .iter()
        .map(|(p, a, e)| (*p, a.as_str(), e.as_str()))
        .collect();
    let proxy = Proxy::start(&config(port, backend.addr(), &routes));

    let consumer_of = |path: &str| {
        backend
            .records()
            .into_iter()
            .find(|r| r.target == path)
            .and_then(|r| r.header("x-consumer"))
    };
    assert_eq!(get(port, "/key/1", "X-Api-Key: key-one\r\n").status, 200);
    assert_eq!(consumer_of("/key/1").as_deref(), Some("billing"));
    assert_eq!(get(port, "/query/1?api_key=key-one", "").status, 200);
    assert_eq!(
        consumer_of("/query/1?api_key=key-one").as_deref(),
        Some("billing")
    );
    assert_eq!(
        get(port, "/basic/1", &basic("alice", "alice-pw")).status,
        200
    );
    assert_eq!(consumer_of("/basic/1").as_deref(), Some("alice"));
    // A keep-alive client pays the bcrypt check once; later requests hit the cache.
    let mut c = Client::connect(port);
    for i in 0..5 {
        let r = c.request(
            format!(
                "GET /basic/ka{i} HTTP/1.1\r\nHost: t\r\n{}\r\n",
                basic("alice", "alice-pw")
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200);
    }

    let refused = [
        (
            "/key/wrong",
            "X-Api-Key: key-two\r\n".to_string(),
            "ApiKey realm",
        ),
        ("/key/missing", String::new(), "ApiKey realm"),
        ("/query/wrong?api_key=nope", String::new(), "ApiKey realm"),
        (
            "/basic/wrong",
            basic("alice", "nope"),
            "Basic realm=\"staff\"",
        ),
        (
            "/basic/nobody",
            basic("bob", "bob-pw"),
            "Basic realm=\"staff\"",
        ),
        ("/basic/missing", String::new(), "Basic realm=\"staff\""),
        // Two credentials of one kind, a valid one first: the proxy would
        // check one while a backend that reads the last (or all) reads
        // another.
        (
            "/key/two",
            "X-Api-Key: key-one\r\nX-Api-Key: key-two\r\n".to_string(),
            "ApiKey realm",
        ),
        (
            "/query/two?api_key=key-one&api_key=forged",
            String::new(),
            "ApiKey realm",
        ),
        (
            "/basic/two",
            basic("alice", "alice-pw") + &basic("root", "forged"),
            "Basic realm=\"staff\"",
        ),
    ];
    for (path, headers, challenge) in &refused {
        let r = get(port, path, headers);
        assert_eq!(r.status, 401, "{path}");
        let got = r.header("www-authenticate").unwrap_or_default();
        assert!(got.contains(challenge), "{path}: {got:?}");
    }
    assert_eq!(
        get(port, "/key/new-before", "X-Api-Key: key-two\r\n").status,
        401
    );

    // Load on the authenticated routes across the reload: no failed request.
    let json = ringgate_tests::proxy::temp_path("ringgate-auth-load", "json");
    let mut load = std::process::Command::new(ringgate_tests::ringload_bin())
        .arg(format!("http://127.0.0.1:{port}/key/load"))
        .args(["-H", "X-Api-Key: key-one"])
        .args(["-c", "8", "-d", "3s", "--cores", "1", "-q", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ringload");
    thread::sleep(Duration::from_millis(500));
    std::fs::write(
        &keys,
        api_keys_file(&[("billing", "key-one"), ("search", "key-two")]),
    )
    .expect("keys");
    let users_v2 = format!("{users_v1}bob:{}\n", argon2_hash("bob-pw"));
    std::fs::write(&users, users_v2).expect("users");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(3), || {
        let r = get(port, "/key/new", "X-Api-Key: key-two\r\n");
        (r.status == 200)
            .then_some(())
            .ok_or(format!("status {}", r.status))
    })
    .expect("the added key works after SIGHUP");
    assert_eq!(consumer_of("/key/new").as_deref(), Some("search"));
    assert_eq!(get(port, "/basic/bob", &basic("bob", "bob-pw")).status, 200);
    assert_eq!(consumer_of("/basic/bob").as_deref(), Some("bob"));
    assert_eq!(
        get(port, "/basic/alice-still", &basic("alice", "alice-pw")).status,
        200
    );
    assert!(load.wait().expect("ringload").success());
    let report = std::fs::read_to_string(&json).expect("ringload's report");
    let _ = std::fs::remove_file(&json);
    let outcome = ringgate_tests::proxy::LoadOutcome::from_report(&report);
    assert!(outcome.requests > 100, "{outcome:?}");
    assert_eq!(outcome.errors, 0, "{outcome:?}");
    assert!(outcome.non_2xx.is_empty(), "{outcome:?}");

    // A broken file on SIGHUP changes nothing and says which key and why.
    std::fs::write(&users, "carol:plaintext\n").expect("users");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(3), || {
        let log = proxy.stderr();
        log.contains("not reloaded").then_some(()).ok_or(log)
    })
    .expect("the refused reload is logged");
    let log = proxy.stderr();
    assert!(log.contains("routes[2].auth.basic.htpasswd"), "{log}");
    assert_eq!(
        get(port, "/basic/bob-again", &basic("bob", "bob-pw")).status,
        200
    );
}

/// An argon2id PHC string with small parameters (the tests' CPU is shared).
fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"ringgate-test-salt").expect("salt");
    let params = argon2::Params::new(1024, 1, 1, None).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2")
        .to_string()
}

#[test]
fn check_names_the_key_file_line_and_reason_of_a_bad_auth_file() {
    let d = dir("ringgate-auth-check");
    let users = write(
        &d,
        "users",
        "# staff\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
    );
    let jwks_path = write(
        &d,
        "jwks.json",
        r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
    );
    let text = config(
        ringgate_tests::free_port(),
        "127.0.0.1:9".parse().expect("addr"),
        &[
            (
                "/a/",
                &format!(r#"{{ basic = {{ htpasswd = "{users}" }} }}"#),
                "",
            ),
            (
                "/b/",
                &format!(r#"{{ jwt = {{ keys = "{jwks_path}" }} }}"#),
                "",
            ),
        ],
    );
    let file = write(&d, "ringgate.toml", &text);
    let out = ringgate_tests::proxy::run_ringgate(&["check".as_ref(), file.as_ref()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).expect("line") + 1;
    assert!(
        out.stderr.contains(&format!(":{}:", line_of("htpasswd")))
            && out.stderr.contains("routes[0].auth.basic.htpasswd")
            && out
                .stderr
                .contains("line 2: user \"alice\": a SHA-1 hash is refused"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(":{}:", line_of("jwks.json")))
            && out.stderr.contains("routes[1].auth.jwt.keys")
            && out.stderr.contains("keys[0]: an RSA key needs \"alg\""),
        "{}",
        out.stderr
    );
}

#[test]
fn the_auth_example_config_and_its_files_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = ringgate_tests::proxy::run_with_timeout(
        std::process::Command::new(ringgate_tests::ringgate_bin())
            .current_dir(&root)
            .args(["check", "config/examples/auth.toml"]),
        Duration::from_secs(10),
    );
    assert!(out.success, "{}", out.stderr);
}
