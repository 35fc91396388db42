"""Connects straight to warrant's listener (not redirected: port 15443 is not
an intercepted port) and tries a TLS handshake for api.openai.com. warrant
must refuse it: there is no eBPF Origin for such a connection. Prints
"refused" or "accepted"."""

import socket
import ssl
import sys

addr = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 15443)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with socket.create_connection(addr, timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls:
            tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            data = tls.recv(100)
            print("accepted" if data else "refused")
except (OSError, ssl.SSLError) as error:
    print(f"refused ({type(error).__name__})")
