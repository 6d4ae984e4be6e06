#!/usr/bin/env python3
"""Time to interactive of a built `scinterp atlas` site in headless Chromium, from file:// (standard library
only: speaks W3C WebDriver to Debian's chromedriver).

For each page (overview, the largest layer's explorer, a feature page, a gene search, a term search, a circuit
view) it loads the site fresh (new tab state: navigate to about:blank first) and reads the page's own
`atlas.timings`: `at` = ms from navigation start until the route finished rendering and the next frame was
laid out (the first route), `ms` = the route's render time. It also reports console errors (SEVERE).

    python3 bench/python/atlas_tti.py SITE [--chromium /usr/bin/chromium] [--chromedriver /usr/bin/chromedriver]
        [--repeat 3] [--gene SYMBOL] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, chromium: str, chromedriver: str, profile: str):
        self.port = free_port()
        self.proc = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                if self.req("GET", "/status")["value"]["ready"]:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={profile}"]}}}}
        self.session = self.req("POST", "/session", caps)["value"]["sessionId"]

    def req(self, method: str, path: str, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = json.dumps(body) if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = json.loads(r.read() or b"null")
        c.close()
        return out

    def cmd(self, method: str, path: str, body=None):
        v = self.req(method, f"/session/{self.session}{path}", body)["value"]
        if isinstance(v, dict) and "error" in v:
            raise RuntimeError(f"{method} {path}: {v}")
        return v

    def script(self, js: str):
        return self.cmd("POST", "/execute/sync", {"script": js, "args": []})

    def open(self, url: str, route: str) -> dict:
        self.cmd("POST", "/url", {"url": "about:blank"})
        self.cmd("POST", "/url", {"url": url})
        for _ in range(1200):
            t = self.script("return window.atlas && window.atlas.timings && window.atlas.timings.length ? "
                            "window.atlas.timings[window.atlas.timings.length - 1] : null;")
            if t and t["route"].startswith(route):
                return t
            time.sleep(0.025)
        raise RuntimeError(f"{url}: no render of {route}")

    def severe(self) -> list[str]:
        logs = self.cmd("POST", "/se/log", {"type": "browser"})
        return [e["message"] for e in logs if e.get("level") == "SEVERE"]

    def close(self):
        try:
            self.req("DELETE", f"/session/{self.session}")
        finally:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("site")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gene", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    site = os.path.abspath(a.site)
    index = f"file://{site}/index.html"
    with tempfile.TemporaryDirectory() as profile:
        d = Driver(a.chromium, a.chromedriver, profile)
        try:
            d.open(index, "")
            m = d.script("return window.atlas.manifest;")
            layers = m["layers"]
            big = max(range(len(layers)), key=lambda i: layers[i]["rows"])
            # A feature with edges if any (for the circuit view), else feature 0 of the largest layer.
            feat = d.script(f"return window.atlas.load('L{big}/f').then(t => {{ const c = t.cols; "
                            "let best = 0; for (let i = 0; i < c.f.length; i++) if (c.out[i] + c.in[i] > c.out[best] + c.in[best]) best = i; "
                            "return c.f[best]; });")
            gene = a.gene or d.script("return window.atlas.load('genes').then(g => g.symbol.find(s => s) || g.gene_id[0]);")
            term = d.script("return window.atlas.load('terms').then(t => t.name.length ? t.name[0].split(/[_ ]/)[0] : '');")
            pages = [("overview", "", ""), ("layer explorer", f"layer/{big}", f"#/layer/{big}"),
                     ("feature page", f"feature/{big}/{feat}", f"#/feature/{big}/{feat}"),
                     ("gene search", "gene/", f"#/gene/{gene}"), ("term search", "term/", f"#/term/{term}"),
                     ("circuit view", f"circuit/{big}/{feat}", f"#/circuit/{big}/{feat}")]
            results = []
            for name, route, frag in pages:
                runs = [d.open(index + frag, route) for _ in range(a.repeat)]
                results.append({"page": name, "route": route,
                                "interactive_ms_median": statistics.median(r["at"] for r in runs),
                                "interactive_ms_max": max(r["at"] for r in runs),
                                "render_ms_median": statistics.median(r["ms"] for r in runs)})
            errors = d.severe()
        finally:
            d.close()
    if a.json:
        print(json.dumps({"site": site, "pages": results, "console_errors": errors}, indent=1))
    else:
        for r in results:
            print(f"{r['page']:>15}: interactive {r['interactive_ms_median']:7.0f} ms (max {r['interactive_ms_max']:.0f}); "
                  f"render {r['render_ms_median']:.0f} ms  [{r['route']}]")
        print(f"console errors: {len(errors)}")
        for e in errors:
            print("  ", e)


if __name__ == "__main__":
    main()
