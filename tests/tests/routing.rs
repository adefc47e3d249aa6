//! Routing on header values, end to end: a canary route that only requests
//! carrying `x-canary: 1` take, next to the default route for the same path.

use ringgate_tests::proxy::{curl_status, status_line};
use ringgate_tests::{free_port, Backend, Behaviour, Client, Proxy};

#[test]
fn a_header_condition_sends_matching_requests_to_their_own_upstream() {
    let stable = Backend::start("stable", Behaviour::Ok);
    let canary = Backend::start("canary", Behaviour::Ok);
    let port = free_port();
    let toml = format!(
        r#"[server]
workers = 2

[[listeners]]
name = "web"
address = "127.0.0.1:{port}"

[[routes]]
listener = "web"
upstream = "stable"

[[routes]]
listener = "web"
match = {{ headers = {{ x-canary = "1" }} }}
upstream = "canary"

[[upstreams]]
name = "stable"
backends = [{{ address = "{}" }}]

[[upstreams]]
name = "canary"
backends = [{{ address = "{}" }}]
"#,
        stable.addr(),
        canary.addr()
    );
    let proxy = Proxy::start(&toml);
    let mut c = Client::connect(proxy.port);
    let cases: [(&str, &str); 4] = [
        ("", "stable"),
        ("X-Canary: 1\r\n", "canary"),
        ("x-canary: 0\r\n", "stable"),
        ("x-other: 1\r\nx-canary:   1  \r\n", "canary"),
    ];
    for (fields, want) in cases {
        let r = c.request(format!("GET /p HTTP/1.1\r\nHost: test\r\n{fields}\r\n").as_bytes());
        assert_eq!(r.status, 200, "{fields:?}: {r:?}");
        assert_eq!(
            r.header("x-backend").as_deref(),
            Some(want),
            "request with {fields:?}"
        );
    }
    assert_eq!(stable.records().len(), 2);
    assert_eq!(canary.records().len(), 2);
}

/// A route that strips `/api/` from the path, replaces `x-env` and drops
/// `x-debug` on the way upstream, and sets `x-frame-options` and drops
/// `x-backend` on the way back; bodies and the forwarding fields go through
/// untouched.
#[test]
fn rewrite_and_header_edits_reach_the_backend() {
    let backend = Backend::start("b", Behaviour::Echo);
    let port = free_port();
    let toml = format!(
        r#"[[listeners]]
name = "web"
address = "127.0.0.1:{port}"

[[routes]]
listener = "web"
match = {{ path_prefix = "/api/" }}
rewrite = {{ prefix = "/v2/" }}
request_headers = {{ set = {{ X-Env = "prod" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ x-frame-options = "DENY" }}, remove = ["X-Backend"] }}
upstream = "app"

[[routes]]
listener = "web"
upstream = "app"

[[upstreams]]
name = "app"
backends = [{{ address = "{}" }}]
"#,
        backend.addr()
    );
    let proxy = Proxy::start(&toml);
    let mut c = Client::connect(proxy.port);
    let r = c.request(
        b"POST /api/users?id=7 HTTP/1.1\r\nHost: shop\r\nX-Debug: 1\r\nx-env: dev\r\nX-Env: qa\r\nContent-Length: 5\r\nAccept: */*\r\n\r\nhello",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "hello", "the body follows the edited head");
    assert_eq!(
        r.header("x-frame-options").as_deref(),
        Some("DENY"),
        "{r:?}"
    );
    assert!(
        !r.has_header("x-backend"),
        "removed from the response: {r:?}"
    );
    assert_eq!(r.header("content-length").as_deref(), Some("5"), "{r:?}");
    // Outside the route's prefix nothing changes.
    let r = c.request(b"GET /other HTTP/1.1\r\nHost: shop\r\nX-Debug: 1\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.has_header("x-frame-options"), "{r:?}");

    let records = backend.records();
    let edited = &records[0];
    assert_eq!(edited.method, "POST");
    assert_eq!(edited.target, "/v2/users?id=7");
    assert_eq!(edited.version, "HTTP/1.1");
    assert_eq!(
        edited.header("x-env").as_deref(),
        Some("prod"),
        "set replaces every x-env"
    );
    assert!(!edited.has_header("x-debug"), "{:?}", edited.headers);
    assert_eq!(edited.header("host").as_deref(), Some("shop"));
    assert_eq!(edited.header("accept").as_deref(), Some("*/*"));
    assert_eq!(edited.header("content-length").as_deref(), Some("5"));
    assert_eq!(
        edited.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(edited.body, b"hello");
    let untouched = &records[1];
    assert_eq!(untouched.target, "/other");
    assert_eq!(untouched.header("x-debug").as_deref(), Some("1"));
}

/// A catch-all to the `public` backend, `/admin/` to `admin`, and `/api/`
/// rewritten to `/v2/` on `admin`, on one worker.
fn public_admin_and_api_routes() -> (Backend, Backend, Proxy) {
    let (public, admin, proxy, _) = public_and_admin_upstreams(
        r#"[[routes]]
listener = "web"
upstream = "public"

[[routes]]
listener = "web"
match = { path_prefix = "/admin/" }
upstream = "admin"

[[routes]]
listener = "web"
match = { path_prefix = "/api/" }
rewrite = { prefix = "/v2/" }
upstream = "admin"
"#,
    );
    (public, admin, proxy)
}

/// A one-worker proxy with `routes` (TOML) over two listeners, `web` (the
/// proxy's port, HTTP/2 with prior knowledge too) and `plain` (the port
/// returned), and two upstreams, `public` and `admin`, each a backend
/// answering with its name.
fn public_and_admin_upstreams(routes: &str) -> (Backend, Backend, Proxy, u16) {
    let public = Backend::start("public", Behaviour::Ok);
    let admin = Backend::start("admin", Behaviour::Ok);
    let (port, plain_port) = (free_port(), free_port());
    let toml = format!(
        r#"[server]
workers = 1

[[listeners]]
name = "web"
address = "127.0.0.1:{port}"
http2 = true

[[listeners]]
name = "plain"
address = "127.0.0.1:{plain_port}"

{routes}
[[upstreams]]
name = "public"
backends = [{{ address = "{}" }}]

[[upstreams]]
name = "admin"
backends = [{{ address = "{}" }}]
"#,
        public.addr(),
        admin.addr()
    );
    let proxy = Proxy::start(&toml);
    (public, admin, proxy, plain_port)
}

/// A path that only differs from a route's prefix by percent-encoded
/// unreserved characters (`%61` for `a`) or repeated slashes is the same
/// path to a backend that decodes or merges them (RFC 3986 §6.2.2), so it
/// takes the same route, and goes upstream in the form it was routed by:
/// `/%61dmin/x` cannot slip past the `/admin/` route to the catch-all.
#[test]
fn encoded_unreserved_characters_and_repeated_slashes_cannot_route_around_a_prefix() {
    let (public, admin, proxy) = public_admin_and_api_routes();
    let mut c = Client::connect(proxy.port);
    let cases = [
        ("/%61dmin/x", "admin", "/admin/x"),
        ("/ad%6Din/x?q=%61", "admin", "/admin/x?q=%61"),
        ("//admin/x", "admin", "/admin/x"),
        ("/admin//x///y", "admin", "/admin/x/y"),
        ("/%7Euser/a%2Fb", "public", "/~user/a%2Fb"),
        ("/%61pi/users?id=7", "admin", "/v2/users?id=7"),
        ("/admin/plain", "admin", "/admin/plain"),
    ];
    for (target, want, upstream_target) in cases {
        let r = c.request(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(r.header("x-backend").as_deref(), Some(want), "{target}");
        let seen = if want == "admin" {
            admin.targets()
        } else {
            public.targets()
        };
        assert_eq!(
            seen.last().map(String::as_str),
            Some(upstream_target),
            "{target}"
        );
    }
    // A `%` that begins no escape could make one out of what decoding
    // yields (`%%361` → `%61`): the public backend would then be handed
    // `/%61dmin/x`, which it decodes to `/admin/x`. Such a path is refused.
    for target in [
        "/%%361dmin/x",
        "/%%36%31dmin/x",
        "/a%4%61/x",
        "/%zz/x",
        "/x%",
        "/x%4",
    ] {
        let exchange = ringgate_tests::client::exchange(
            proxy.port,
            format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
        );
        let r = exchange.response.expect("an answer");
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    assert!(
        public
            .targets()
            .iter()
            .all(|t| !t.contains('%') || t.contains("%2F")),
        "{:?}",
        public.targets()
    );
    // The query is not a path: a `%` there is the backend's to read.
    let r = c.request(b"GET /p?discount=100% HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Backends read some characters of a path as a separator where routes do
/// not: nginx decodes `%2F` before it maps a path, IIS reads `\` and `%5C`
/// as `/`. A path that such a reading would send down another route is
/// refused; one it routes the same goes up as sent.
#[test]
fn encoded_and_back_slashes_cannot_route_around_a_prefix() {
    let (public, _admin, proxy) = public_admin_and_api_routes();
    // nginx decodes `%2F` before it maps a path (`/admin%2Fsecret` is
    // its `/admin/secret`), IIS reads `\` and `%5C` as `/`: each of these
    // missed the `/admin/` route for the catch-all.
    for target in [
        "/admin%2Fsecret",
        "/admin%2fsecret",
        "/admin%2F%2Fsecret",
        "/admin%5Csecret",
        "/admin%5csecret",
        "/admin\\secret",
        "/admin;x%2Fsecret",
        "/api%2Fusers",
        "/admin%2F",
    ] {
        let r = Client::connect(proxy.port).get(target);
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    // An HTTP/2 request's path is read the same way.
    let url = format!("http://127.0.0.1:{}/admin%2Fsecret", proxy.port);
    let out = curl_status(&["--http2-prior-knowledge", "--path-as-is", &url]);
    assert_eq!(status_line(&out), "400 2", "{}", out.stderr);
    assert!(public.targets().is_empty(), "{:?}", public.targets());
    // Encoded slashes that route the same either way pass as sent.
    for (target, want, forwarded) in [
        ("/files/a%2Fb", "public", "/files/a%2Fb"),
        ("/admin/a%2Fb", "admin", "/admin/a%2Fb"),
        (
            "/api/projects/group%2Fproj",
            "admin",
            "/v2/projects/group%2Fproj",
        ),
        ("/x\\y", "public", "/x\\y"),
    ] {
        let r = Client::connect(proxy.port).get(target);
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(r.header("x-backend").as_deref(), Some(want), "{target}");
        assert_eq!(
            r.body_str(),
            format!("hello from {want} {forwarded}\n"),
            "{target}"
        );
    }
}

/// Tomcat and Jetty drop each segment's `;parameters` before they map a
/// path, so `/admin;x/secret` is `/admin/secret` to them. A path whose
/// parameters would change which route it takes is refused; parameters
/// that change nothing (a session id) pass.
#[test]
fn path_parameters_cannot_route_around_a_prefix() {
    let (public, _admin, proxy) = public_admin_and_api_routes();
    for target in ["/admin;x/secret", "/admin;/secret", "/admin;x=1;y/z?q=1"] {
        let r = Client::connect(proxy.port).get(target);
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    assert!(public.targets().is_empty(), "{:?}", public.targets());
    for (target, want) in [
        ("/app;jsessionid=A1/page", "public"),
        ("/admin/page;jsessionid=A1", "admin"),
        ("/admin;v=1", "public"),
        ("/ad;min/x", "public"),
    ] {
        let r = Client::connect(proxy.port).get(target);
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(r.header("x-backend").as_deref(), Some(want), "{target}");
    }
}

/// Rack's MethodOverride, Symfony, Laravel and Google's APIs take a POST
/// with `X-HTTP-Method-Override: DELETE` (or `X-HTTP-Method`,
/// `X-Method-Override`) for a DELETE. Where routes choose by method, such a
/// request would take the POST route while the backend runs the DELETE
/// another route (and its authentication) guards: refused (400). An
/// override that routes the same passes, and on a listener whose routes
/// ignore the method nothing is checked.
#[test]
fn a_method_override_cannot_route_around_a_methods_route() {
    let (public, _admin, proxy, other_port) = public_and_admin_upstreams(
        r#"[[routes]]
listener = "web"
upstream = "public"

[[routes]]
listener = "web"
match = { methods = ["DELETE", "PUT"] }
upstream = "admin"

[[routes]]
listener = "plain"
upstream = "public"
"#,
    );
    let port = proxy.port;
    let send = |port: u16, method: &str, field: &str| {
        Client::connect(port).request(
            format!("{method} /items/7 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n{field}\r\n")
                .as_bytes(),
        )
    };
    for field in [
        "X-HTTP-Method-Override: DELETE\r\n",
        "x-http-method-override: delete\r\n",
        "X-HTTP-Method: PUT\r\n",
        "X-Method-Override: DELETE\r\n",
        "X_HTTP_Method_Override: DELETE\r\n",
        "X-HTTP-Method-Override: POST\r\nX-HTTP-Method-Override: DELETE\r\n",
    ] {
        let r = send(port, "POST", field);
        assert_eq!(r.status, 400, "{field:?}: {r:?}");
    }
    assert!(public.targets().is_empty(), "{:?}", public.targets());
    for (method, field, want) in [
        ("POST", "X-HTTP-Method-Override: POST\r\n", "public"),
        ("POST", "X-HTTP-Method-Override: PATCH\r\n", "public"),
        ("DELETE", "X-HTTP-Method-Override: PUT\r\n", "admin"),
        ("POST", "X-Unrelated: DELETE\r\n", "public"),
    ] {
        let r = send(port, method, field);
        assert_eq!(r.status, 200, "{method} {field:?}: {r:?}");
        assert_eq!(r.header("x-backend").as_deref(), Some(want), "{field:?}");
    }
    let r = send(other_port, "POST", "X-HTTP-Method-Override: DELETE\r\n");
    assert_eq!(r.status, 200, "{r:?}");
}
