//! `scinterp atlas serve`: a small static file server for a built atlas, on 127.0.0.1 only (the site also
//! works from `file://`; a server is for browsers or set-ups that restrict local files).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::{AtlasError, Result};

/// A running server; [`ServeHandle::stop`] ends it, [`ServeHandle::wait`] blocks until it ends.
pub struct ServeHandle {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServeHandle {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the atlas folder `dir` on 127.0.0.1:`port` (0: any free port) from a background thread.
pub fn serve(dir: &Path, port: u16) -> Result<ServeHandle> {
    if !dir.join("index.html").is_file() || !dir.join("data/atlas.js").is_file() {
        return Err(AtlasError::input(
            dir,
            "not an atlas (no index.html and data/atlas.js); build one with `scinterp atlas … --out DIR`",
        ));
    }
    let root = dir.canonicalize().map_err(|e| AtlasError::io(dir, e))?;
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        AtlasError::Usage(format!(
            "--port {port}: cannot listen on 127.0.0.1:{port} ({e}); try another port"
        ))
    })?;
    let addr = listener.local_addr().map_err(|e| AtlasError::io(dir, e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = handle(stream, &root);
            });
        }
    });
    Ok(ServeHandle {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `%xx` decoding of a URL path (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file a request path names inside `root`, or None when it would leave the site.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = percent_decode(url_path.split(['?', '#']).next().unwrap_or("/"));
    let mut file = root.to_path_buf();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => file.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if file.is_dir() {
        file.push("index.html");
    }
    // Symlinks out of the site are refused too.
    let real = file.canonicalize().ok()?;
    real.starts_with(root).then_some(real)
}

fn handle(stream: TcpStream, root: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut out = stream;
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut out,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            true,
        );
    }
    match resolve(root, target) {
        Some(file) => match std::fs::read(&file) {
            Ok(body) => respond(&mut out, "200 OK", content_type(&file), &body, method == "GET"),
            Err(_) => respond(&mut out, "404 Not Found", "text/plain", b"not found\n", true),
        },
        None => respond(&mut out, "404 Not Found", "text/plain", b"not found\n", true),
    }
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if with_body {
        out.write_all(body)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&buf[..split]).into_owned(),
            buf[split + 4..].to_vec(),
        )
    }

    #[test]
    fn serves_the_site_and_nothing_outside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        std::fs::create_dir_all(site.join("data")).unwrap();
        std::fs::write(site.join("index.html"), "<html>atlas</html>").unwrap();
        std::fs::write(site.join("data/atlas.js"), "atlas.receive('atlas',{});").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "no").unwrap();
        let h = serve(&site, 0).unwrap();
        assert!(h.addr.ip().is_loopback());
        let (head, body) = get(h.addr, "/");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.contains("text/html"),
            "{head}"
        );
        assert_eq!(body, b"<html>atlas</html>");
        let (head, _) = get(h.addr, "/data/atlas.js?x=1");
        assert!(head.contains("text/javascript"), "{head}");
        for bad in [
            "/../secret.txt",
            "/data/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/missing.js",
        ] {
            let (head, _) = get(h.addr, bad);
            assert!(head.starts_with("HTTP/1.1 404"), "{bad}: {head}");
        }
        h.stop();
        assert!(
            serve(tmp.path(), 0).is_err(),
            "a folder without an atlas is refused"
        );
    }
}
