"""Prints one sample of warrant's Prometheus endpoint (argv: HOST:PORT NAME
[LABELS], LABELS as written between the braces, e.g. 'kind="refused"'), or 0
when the sample is absent. Exits 1 when the endpoint cannot be read."""

import sys
import urllib.request

addr, name = sys.argv[1], sys.argv[2]
labels = sys.argv[3] if len(sys.argv) > 3 else ""
wanted = f"{name}{{{labels}}}" if labels else name
try:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        text = response.read().decode()
except OSError as error:
    sys.exit(f"cannot read http://{addr}/metrics: {error}")
for line in text.splitlines():
    if line.startswith("#"):
        continue
    sample, _, value = line.rpartition(" ")
    if sample == wanted:
        number = float(value)
        print(int(number) if number.is_integer() else number)
        break
else:
    print(0)
