"""A TLS client for a host that is not one of warrant's upstreams: from a
tagged unit, its connection is redirected to warrant, which relays it
unchanged to the address dialled. Prints one of:
  answered <HTTP status line>   the service answered through the relay
  closed (<why>)                the connection was closed or reset before
      any answer: the relay was refused
  error=<type> (<errno>)        anything else
"""

import errno
import socket
import ssl
import sys

host = sys.argv[1]
ctx = ssl.create_default_context()
# The relay is what is tested, not the service's certificate.
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    raw = socket.create_connection((host, 443), timeout=90)
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = tls.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        print(f"answered {line}" if line else "closed (EOF after the handshake)")
except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError) as error:
    print(f"closed ({type(error).__name__})")
except (OSError, ssl.SSLError) as error:
    print(f"error={type(error).__name__} ({errno.errorcode.get(error.errno or 0, '?')})")
