"""Connects straight to warrant's listener (not redirected: port 15443 is not
an intercepted port) and tries a TLS handshake for api.openai.com. warrant
must refuse it: there is no eBPF Origin for such a connection, so the
listener closes it without a word of TLS. Prints one of:
  closed-by-listener port=<local port>   the TCP connection was accepted,
      then closed (EOF or reset) before any TLS answer: warrant's refusal
  accepted                               TLS was answered: not refused
  error=<type> (<errno>)                 anything else (no listener,
      timeout, ...): not warrant's refusal either
"""

import errno
import socket
import ssl
import sys

addr = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 15443)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    raw = socket.create_connection(addr, timeout=10)
except OSError as error:
    print(f"error={type(error).__name__} ({errno.errorcode.get(error.errno, '?')})")
    sys.exit(0)
port = raw.getsockname()[1]
try:
    with ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls:
        tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        # The handshake was answered: whatever follows, not a refusal.
        print("accepted")
except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
    print(f"closed-by-listener port={port}")
except (OSError, ssl.SSLError) as error:
    print(f"error={type(error).__name__} ({errno.errorcode.get(error.errno or 0, '?')})")
