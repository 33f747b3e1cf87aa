//! The HTTP/1.1 requests UPnP clients send to the description and control URLs (UDA 1.1
//! sections 2 and 3): a GET, or a POST with a SOAP body and its length. Only what those
//! clients use is read: no chunked bodies, no pipelining, one request per connection
//! (answers close it).

/// The longest request read, head and body: a SOAP action is well under 2 KiB.
pub const MAX_REQUEST: usize = 16 * 1024;

/// Why bytes are not a request this server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not text, no `METHOD PATH HTTP/1.x` line, a header without a colon, or a bad length.
    #[error("not an HTTP/1.x request")]
    Malformed,
    /// Longer than [`MAX_REQUEST`].
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLarge,
    /// A chunked body, which UPnP clients do not send.
    #[error("chunked request bodies are not read")]
    Chunked,
}

/// A request, borrowed from the bytes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, as sent.
    pub path: &'a str,
    /// The SOAPACTION header (UDA 1.1 section 3.2.1), quotes removed.
    pub soap_action: Option<&'a str>,
    /// The body: as long as Content-Length says.
    pub body: &'a [u8],
}

/// The request at the start of `bytes`; `Ok(None)` while it is not all there yet.
pub fn parse(bytes: &[u8]) -> Result<Option<Request<'_>>, HttpError> {
    let Some(head_len) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if bytes.len() > MAX_REQUEST {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = core::str::from_utf8(&bytes[..head_len]).map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n");
    let start = lines.next().ok_or(HttpError::Malformed)?;
    let mut parts = start.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    if method.is_empty() || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed);
    }
    let (mut length, mut soap_action) = (0usize, None);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("Content-Length") {
            length = value.parse().map_err(|_| HttpError::Malformed)?;
        } else if name.eq_ignore_ascii_case("Transfer-Encoding") {
            return Err(HttpError::Chunked);
        } else if name.eq_ignore_ascii_case("SOAPAction") {
            soap_action = Some(value.trim_matches('"'));
        }
    }
    let body_at = head_len + 4;
    let end = body_at.checked_add(length).ok_or(HttpError::TooLarge)?;
    if end > MAX_REQUEST {
        return Err(HttpError::TooLarge);
    }
    let Some(body) = bytes.get(body_at..end) else {
        return Ok(None);
    };
    Ok(Some(Request {
        method,
        path,
        soap_action,
        body,
    }))
}

/// An answer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400.
    BadRequest,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 500: a SOAP fault (UDA 1.1 section 3.2.2).
    InternalServerError,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::InternalServerError => "500 Internal Server Error",
        }
    }
}

/// A whole answer, which closes the connection.
pub fn write_response(status: Status, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nServer: {}\r\nEXT:\r\n\r\n",
        status.line(),
        body.len(),
        super::description::SERVER,
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static POST: &[u8] = b"POST /ctl/IPConn HTTP/1.1\r\n\
Host: 100.64.0.1:5000\r\n\
User-Agent: Debian/12 UPnP/1.1 MiniUPnPc/2.2.4\r\n\
Content-Length: 5\r\n\
Content-Type: text/xml\r\n\
SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:2#GetExternalIPAddress\"\r\n\
Connection: close\r\n\
\r\n\
<a/>\n";

    #[test]
    fn reads_a_post_once_its_body_is_there() {
        let r = parse(POST).expect("valid").expect("complete");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/ctl/IPConn");
        assert_eq!(
            r.soap_action,
            Some("urn:schemas-upnp-org:service:WANIPConnection:2#GetExternalIPAddress")
        );
        assert_eq!(r.body, b"<a/>\n");
        assert_eq!(parse(&POST[..POST.len() - 1]), Ok(None));
        assert_eq!(parse(&POST[..20]), Ok(None));
        let get = parse(b"GET /rootDesc.xml HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (get.method, get.path, get.body),
            ("GET", "/rootDesc.xml", &b""[..])
        );
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        for (bad, why) in [
            (&b"GET /\r\n\r\n"[..], HttpError::Malformed),
            (b"GET x HTTP/1.1\r\n\r\n", HttpError::Malformed),
            (b"GET / SPDY/3\r\n\r\n", HttpError::Malformed),
            (b"GET / HTTP/1.1\r\nbad\r\n\r\n", HttpError::Malformed),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
                HttpError::TooLarge,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
                HttpError::TooLarge,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::Chunked,
            ),
        ] {
            assert_eq!(parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(parse(&[b'a'; MAX_REQUEST + 1]), Err(HttpError::TooLarge));
    }

    #[test]
    fn answers_close_the_connection() {
        let a = write_response(Status::NotFound, "text/plain", b"no");
        let a = String::from_utf8(a).expect("text");
        assert!(a.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(a.contains("\r\nContent-Length: 2\r\nConnection: close\r\n"));
        assert!(a.ends_with("\r\n\r\nno"));
    }
}
