"""A test agent: the real Python openai SDK, unchanged, with a placeholder
key. It knows nothing of warrant: whether its requests carry a real key is
decided by the unit it runs in (tagged or not).

--out FILE: request in a loop until SIGTERM, one JSON line per request,
with its start and end on CLOCK_MONOTONIC (t0, t1: the journal's clock).
--once: one request; prints "ok", "status=<HTTP status>", "error=ECONNREFUSED"
(the connection was refused: nothing listens where it was sent) or
"error=<type>: <message>" for anything else, then "t0=<start> t1=<end>".
"""

import argparse
import errno
import json
import signal
import ssl
import sys
import time

import openai

stopping = False


def request():
    # A fresh client (and so a fresh connection) per request: the restart
    # scenario is about connections opened while warrant restarts, which
    # the socket unit must queue. max_retries=0: a failure is never hidden
    # by the SDK's retries.
    with openai.OpenAI(max_retries=0, timeout=30) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "ping"}],
        )
        return reply.choices[0].message.content


def root_errno(error):
    """The system errno of the OSError at the bottom of an exception chain
    (the SDK wraps httpx's error, which wraps the socket's), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        # ssl.SSLError is an OSError whose errno is OpenSSL's error code
        # (8 for an EOF), not the system's: it is not what refused.
        if isinstance(error, OSError) and not isinstance(error, ssl.SSLError) and error.errno:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def once():
    t0 = time.monotonic()
    try:
        request()
        print("ok")
    except openai.APIStatusError as error:
        print(f"status={error.status_code}")
    except Exception as error:  # noqa: BLE001 - reported, not hidden
        code = root_errno(error)
        if code == errno.ECONNREFUSED:
            print("error=ECONNREFUSED")
        else:
            name = errno.errorcode.get(code, "no errno") if code else "no errno"
            print(f"error={type(error).__name__} ({name}): {error}")
    print(f"t0={t0:.6f} t1={time.monotonic():.6f}")


def loop(out, interval):
    def stop(*_):
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with open(out, "a", buffering=1) as log:
        while not stopping:
            started = time.monotonic()
            try:
                request()
                entry = {"ok": True}
            except Exception as error:  # noqa: BLE001 - every failure counts
                entry = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            ended = time.monotonic()
            entry["t0"] = round(started, 6)
            entry["t1"] = round(ended, 6)
            entry["secs"] = round(ended - started, 3)
            log.write(json.dumps(entry) + "\n")
            time.sleep(interval)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    if args.once:
        once()
    elif args.out:
        loop(args.out, args.interval)
    else:
        sys.exit("--out FILE or --once")


if __name__ == "__main__":
    main()
