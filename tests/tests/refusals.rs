//! Requests the proxy must refuse (400, close) without forwarding a byte:
//! ambiguous framing, malformed lengths and codings, bad chunks, malformed
//! heads (RFC 9112 §2.2, §3, §5, §6, §7).

use ringgate_tests::{assert_refused, Backend, Behaviour, Client, Proxy, ProxyConfig};

#[test]
fn cl_and_te_together_are_refused() {
    assert_refused(
        400,
        &[
            (
                "CL then TE",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "TE then CL",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn differing_content_lengths_are_refused() {
    assert_refused(
        400,
        &[(
            "two Content-Length fields",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        )],
    );
}

#[test]
fn content_length_list_is_refused() {
    assert_refused(
        400,
        &[(
            "Content-Length: 5, 6",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        )],
    );
}

#[test]
fn malformed_content_length_is_refused() {
    let values = ["+5", "-1", "0x5", "5a", "", "99999999999999999999999"];
    let raws: Vec<(String, Vec<u8>)> = values
        .iter()
        .map(|v| {
            (
                format!("Content-Length: {v:?}"),
                format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\nhello")
                    .into_bytes(),
            )
        })
        .collect();
    let cases: Vec<(&str, &[u8])> = raws
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_slice()))
        .collect();
    assert_refused(400, &cases);
}

#[test]
fn transfer_encoding_in_http10_request_is_refused() {
    assert_refused(
        400,
        &[(
            "TE in HTTP/1.0",
            b"POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )],
    );
}

#[test]
fn obfuscated_transfer_encoding_is_refused() {
    assert_refused(
        400,
        &[
            (
                "xchunked",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "chunked, identity (chunked not final)",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "chunked followed by vertical tab",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0b\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "space before the colon",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
        ],
    );
}

/// A backend that reads `_` as `-` in field names (CGI and WSGI servers
/// turn both into `HTTP_TRANSFER_ENCODING`) would frame by a field the
/// proxy never framed by: a `Transfer_Encoding: chunked` beside the
/// Content-Length the proxy honoured ends the body early upstream and
/// leaves the rest as a request of the attacker's.
#[test]
fn underscore_spelling_of_a_framing_field_is_refused() {
    assert_refused(
        400,
        &[
            (
                "Transfer_Encoding beside Content-Length",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                "Content_Length beside chunked",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent_Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "Content_length alone, odd case",
                b"POST /a HTTP/1.1\r\nHost: x\r\ncontent_LENGTH: 5\r\n\r\nhello",
            ),
        ],
    );
}

#[test]
fn duplicated_chunked_is_refused() {
    assert_refused(
        400,
        &[
            (
                "chunked, chunked",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "two Transfer-Encoding: chunked fields",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn bad_chunked_framing_is_refused() {
    // The bad chunk travels in the same write as the head, so the proxy has
    // it before it could forward anything.
    const HEAD: &str = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies: [(&str, &[u8]); 6] = [
        ("empty chunk-size line", b"\r\nhello\r\n0\r\n\r\n"),
        ("non-hex chunk size", b"zz\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size overflow",
            b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("bare LF after chunk size", b"5;\nhello\r\n0\r\n\r\n"),
        ("NUL in chunk extension", b"5;a\x00b\r\nhello\r\n0\r\n\r\n"),
        ("missing CRLF after chunk data", b"5\r\nhelloXX0\r\n\r\n"),
    ];
    let raws: Vec<(&str, Vec<u8>)> = bodies
        .iter()
        .map(|(n, b)| {
            let mut raw = HEAD.as_bytes().to_vec();
            raw.extend_from_slice(b);
            (*n, raw)
        })
        .collect();
    let cases: Vec<(&str, &[u8])> = raws.iter().map(|(n, r)| (*n, r.as_slice())).collect();
    assert_refused(400, &cases);
}

#[test]
fn obs_fold_is_refused() {
    assert_refused(
        400,
        &[
            (
                "obs-fold with spaces",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n",
            ),
            (
                "obs-fold with a tab",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tcontinued\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn control_characters_in_header_value_are_refused() {
    assert_refused(
        400,
        &[
            (
                "CR in value",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            ),
            (
                "LF in value",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n",
            ),
            (
                "NUL in value",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn whitespace_before_colon_is_refused() {
    assert_refused(
        400,
        &[
            (
                "space before colon",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
            ),
            (
                "tab before colon",
                b"GET /a HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n",
            ),
            (
                "Host with space before colon",
                b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn missing_host_in_http11_is_refused() {
    assert_refused(400, &[("no Host", b"GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n")]);
}

#[test]
fn a_method_with_a_lowercase_letter_is_refused() {
    // Methods are case-sensitive and routes name them in uppercase: `post`
    // would miss a `methods = ["POST"]` route (and its authentication) for
    // another, while a backend that folds case runs it as POST; `connect`
    // would pass the CONNECT refusal. nginx refuses them too.
    assert_refused(
        400,
        &[
            ("get", b"get /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            (
                "Post",
                b"Post /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            ),
            ("connect", b"connect x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"),
            ("trace", b"trace /a HTTP/1.1\r\nHost: x\r\n\r\n"),
        ],
    );
}

#[test]
fn a_host_with_an_empty_label_or_an_escape_is_refused() {
    // Routed as written, `admin.example..` or `admin%2eexample` would miss
    // a `host = "admin.example"` route, while a backend that trims dots or
    // decodes the name serves admin.example. nginx refuses the first kind.
    assert_refused(
        400,
        &[
            (
                "two trailing dots",
                b"GET /a HTTP/1.1\r\nHost: admin.example..\r\n\r\n",
            ),
            (
                "an empty label",
                b"GET /a HTTP/1.1\r\nHost: admin..example\r\n\r\n",
            ),
            (
                "a leading dot",
                b"GET /a HTTP/1.1\r\nHost: .admin.example\r\n\r\n",
            ),
            ("only a dot", b"GET /a HTTP/1.1\r\nHost: .\r\n\r\n"),
            (
                "an escape",
                b"GET /a HTTP/1.1\r\nHost: admin%2eexample\r\n\r\n",
            ),
            (
                "an empty label, absolute-form",
                b"GET http://admin..example/a HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                "an empty label and a port",
                b"GET /a HTTP/1.1\r\nHost: a..b:80\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn two_host_headers_are_refused() {
    assert_refused(
        400,
        &[
            (
                "two differing Host",
                b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            ),
            (
                "two equal Host",
                b"GET /a HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            ),
        ],
    );
}

#[test]
fn bare_lf_line_endings_are_refused() {
    assert_refused(400, &[("bare LF head", b"GET /a HTTP/1.1\nHost: x\n\n")]);
}

#[test]
fn malformed_request_line_is_refused() {
    assert_refused(
        400,
        &[
            ("GARBAGE", b"GARBAGE\r\n\r\n"),
            ("missing version", b"GET /a\r\nHost: x\r\n\r\n"),
        ],
    );
}

#[test]
fn an_expectation_other_than_100_continue_is_417() {
    assert_refused(
        417,
        &[
            (
                "Expect: 200-ok",
                b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n",
            ),
            (
                "Expect: 100-continue, foo",
                b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue, foo\r\nContent-Length: 5\r\n\r\nhello",
            ),
        ],
    );
}

/// RFC 9112 §3.2 and RFC 3986: a request-target is ASCII; raw bytes above
/// 0x7F are percent-encoded by every conforming client. Backends decode
/// raw UTF-8 (or overlong forms of `/` and `.`) in different ways, so a
/// route or rewrite could match one path and the backend serve another.
#[test]
fn a_request_target_with_raw_non_ascii_bytes_is_refused() {
    assert_refused(
        400,
        &[
            (
                "raw UTF-8 in the path",
                b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                "overlong slash",
                b"GET /a\xc0\xafb HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                "raw byte in the query",
                b"GET /a?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
        ],
    );
}

/// An encoded NUL in a path names no resource, and a backend written in C
/// may read the path only up to it: refused (400), as nginx refuses it. A
/// query is the backend's to read.
#[test]
fn an_encoded_nul_in_the_path_is_refused() {
    assert_refused(
        400,
        &[
            ("%00", b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n"),
            (
                "%00 before a prefix",
                b"GET /admin%00/x HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            ("at the end", b"GET /a%00 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ],
    );
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = Proxy::start(&ProxyConfig::new(backend.addr()).to_toml());
    let r = Client::connect(proxy.port).get("/a?q=%00");
    assert_eq!(r.status, 200, "{r:?}");
}
