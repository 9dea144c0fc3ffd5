#!/usr/bin/env python3
"""A raw HTTP/2 client for tests/e2e/exhaustion.rs: hand-encoded frames over
the Unix socket, so the tests can do what no well-behaved client library
does. Run as another uid by the tests (hence Debian's /usr/bin/python3,
reachable by every uid)."""
import os, select, socket, struct, sys, time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, CONTINUATION, DATA, SETTINGS, RST_STREAM, GOAWAY = 1, 9, 0, 4, 3, 7
END_STREAM, END_HEADERS, ACK = 1, 4, 1

def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def integer(value, prefix_bits, first):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)

def literal(name, value, indexed=False):
    return (bytes([0x40]) if indexed else b"\0") + integer(len(name), 7, 0) + name + integer(len(value), 7, 0) + value

def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s

def read_frame(s, deadline):
    head = b""
    while len(head) < 9:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(9 - len(head))
        if not chunk:
            return None
        head += chunk
    length = int.from_bytes(head[:3], "big")
    payload = b""
    while len(payload) < length:
        chunk = s.recv(length - len(payload))
        if not chunk:
            return None
        payload += chunk
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload

def amplifying_block(value_len, block_len):
    """A large field entered into the dynamic table, then named by 1-byte
    indexes until the block is block_len bytes: costly in memory."""
    block = literal(b"x-a", b"a" * value_len, indexed=True)
    return block + bytes([0x80 | 62]) * (block_len - len(block))

def huffman_block(block_len):
    """Fields whose name and value are each one Huffman-coded byte ('a' is
    00011, padded with ones), 5 bytes a field: costly in decoding work."""
    field = bytes([0x00, 0x81, 0x1F, 0x81, 0x1F])
    return field * (block_len // len(field))

def request_block():
    """A request with a valid :authority to a method nobody serves: attestd
    passes the rest of such a connection through to the HTTP/2 server, and
    nothing is audited."""
    return (literal(b":method", b"POST") + literal(b":scheme", b"http")
            + literal(b":path", b"/attestd.test.Nothing/Call")
            + literal(b":authority", b"localhost")
            + literal(b"content-type", b"application/grpc"))

def block_frames(block, stream):
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    wire = b""
    for i, chunk in enumerate(chunks):
        flags = END_HEADERS if i == len(chunks) - 1 else 0
        wire += frame(HEADERS if i == 0 else CONTINUATION, flags, stream, chunk)
    return wire

def amplify(path, block, after_request=False):
    """Sends one header block and reports whether the server answered;
    after_request: on stream 3, after a first request the server serves
    (frames are then reported as type/stream)."""
    s = connect(path)
    wire = PREFACE + frame(SETTINGS, 0, 0, b"")
    if after_request:
        wire += frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block())
    wire += block_frames(block, 3 if after_request else 1)
    try:
        s.sendall(wire)
    except (BrokenPipeError, ConnectionResetError):
        print("closed while sending")
        return
    kinds = []
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            f = read_frame(s, deadline)
            if f is None:
                print("closed frames=" + ",".join(kinds))
                return
            kinds.append(f"{f[0]}/{f[2]}" if after_request else str(f[0]))
    except ConnectionResetError:
        print("closed frames=" + ",".join(kinds))
        return
    except socket.timeout:
        pass
    print("open frames=" + ",".join(kinds))

def hold(path, count, seconds):
    """Opens count idle connections (preface and SETTINGS, never a request),
    reports how many were served, then when the server closed them."""
    held, refused = [], 0
    for _ in range(count):
        s = connect(path)
        s.settimeout(5)
        try:
            # A refused connection is closed at once: sending may fail.
            s.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
            got = s.recv(9)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            got = b""
        if got:
            held.append(s)
        else:
            refused += 1
            s.close()
    print(f"held {len(held)} refused {refused}", flush=True)
    start = time.monotonic()
    open_ = list(held)
    while open_ and time.monotonic() - start < seconds:
        ready, _, _ = select.select(open_, [], [], 0.1)
        for s in ready:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                open_.remove(s)
    if open_:
        print(f"still open {len(open_)}", flush=True)
    else:
        print(f"all closed after {time.monotonic() - start:.1f}", flush=True)

def fetch_block():
    """FetchX509SVID's headers, the security header among them."""
    return (literal(b":method", b"POST") + literal(b":scheme", b"http")
            + literal(b":path", b"/SpiffeWorkloadAPI/FetchX509SVID")
            + literal(b":authority", b"localhost")
            + literal(b"content-type", b"application/grpc")
            + literal(b"te", b"trailers") + literal(b"workload.spiffe.io", b"true"))

def first_flight(path):
    """Sends the preface, SETTINGS and a whole FetchX509SVID request in one
    write, then prints the frames of each read (kind/flags/stream, reads
    separated by spaces) until the answer's first message."""
    s = connect(path)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, b"")
              + frame(HEADERS, END_HEADERS, 1, fetch_block())
              + frame(DATA, END_STREAM, 1, b"\0\0\0\0\0"))
    reads, pending = [], b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(65536)
        if not data:
            break
        pending += data
        frames = []
        while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
            length = int.from_bytes(pending[:3], "big")
            stream = int.from_bytes(pending[5:9], "big") & 0x7FFFFFFF
            frames.append(f"{pending[3]}/{pending[4]}/{stream}")
            pending = pending[9 + length:]
        reads.append(",".join(frames))
        if any(f.startswith("0/") and f.endswith("/1") for f in frames):
            break
    print(" ".join(reads), flush=True)

def streams(path, count, share=False):
    """Starts count FetchX509SVID streams at once on one connection; reports
    how many stayed open and how many the server refused. With share, a
    child process holds the connection too (two holders)."""
    s = connect(path)
    if share and os.fork() == 0:
        time.sleep(4)
        os._exit(0)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
    deadline = time.monotonic() + 5
    while True:
        f = read_frame(s, deadline)
        if f[0] == SETTINGS and not f[1] & ACK:
            break
    headers = b"".join(literal(n, v) for n, v in [
        (b":method", b"POST"), (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"), (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"workload.spiffe.io", b"true")])
    wire = frame(SETTINGS, ACK, 0, b"")
    for i in range(count):
        stream = 2 * i + 1
        wire += frame(HEADERS, END_HEADERS, stream, headers)
        wire += frame(DATA, END_STREAM, stream, b"\0\0\0\0\0")
    s.sendall(wire)
    answered, refused, ended = set(), set(), set()
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            f = read_frame(s, deadline)
            if f is None:
                break
            kind, flags, stream, payload = f
            if kind == HEADERS:
                answered.add(stream)
                if flags & END_STREAM:
                    ended.add(stream)
            elif kind == DATA and flags & END_STREAM:
                ended.add(stream)
            elif kind == RST_STREAM:
                code = int.from_bytes(payload[:4], "big")
                (refused if code == 7 else ended).add(stream)
    except socket.timeout:
        pass
    # A refused stream's DATA frame draws a second RST_STREAM (STREAM_CLOSED).
    ended -= refused
    print(f"open {len(answered - ended - refused)} refused {len(refused)} ended {len(ended)}", flush=True)

WINDOW_UPDATE = 8

def bodies(path, conns, per_conn, size, hold_seconds):
    """On each of conns connections, starts per_conn ValidateJWTSVID
    requests whose gRPC message declares size bytes, and sends all of it but
    the last byte (honouring flow control), so a server that accepts such
    messages holds them; then holds the connections open."""
    socks, sent, ended = [], 0, 0
    headers = b"".join(literal(n, v) for n, v in [
        (b":method", b"POST"), (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/ValidateJWTSVID"), (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"workload.spiffe.io", b"true")])
    for _ in range(conns):
        s = connect(path)
        s.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
        deadline = time.monotonic() + 5
        initial = 65535
        while True:
            kind, flags, stream, payload = read_frame(s, deadline)
            if kind == SETTINGS and not flags & ACK:
                for i in range(0, len(payload), 6):
                    if int.from_bytes(payload[i:i + 2], "big") == 4:
                        initial = int.from_bytes(payload[i + 2:i + 6], "big")
                break
        s.sendall(frame(SETTINGS, ACK, 0, b""))
        conn_window, windows, left, done = 65535, {}, {}, set()
        for i in range(per_conn):
            stream = 2 * i + 1
            s.sendall(frame(HEADERS, END_HEADERS, stream, headers))
            windows[stream] = initial
            left[stream] = size + 4  # 5-byte prefix, all but the last byte
        body_start = {st: True for st in left}
        while any(left[st] > 0 for st in left if st not in done):
            progressed = False
            for st in left:
                if st in done or left[st] == 0:
                    continue
                n = min(left[st], windows[st], conn_window, 16384)
                # The first frame carries the whole 5-byte message prefix.
                if n <= 0 or (body_start[st] and n < 5):
                    continue
                chunk = b"\0" * n
                if body_start[st]:
                    chunk = b"\0" + size.to_bytes(4, "big") + b"\0" * (n - 5)
                    body_start[st] = False
                s.sendall(frame(DATA, 0, st, chunk))
                left[st] -= n
                windows[st] -= n
                conn_window -= n
                sent += n
                progressed = True
            if progressed:
                continue
            try:
                f = read_frame(s, time.monotonic() + 0.5)
            except socket.timeout:
                break  # the server grants no more: it holds what it has
            if f is None:
                break
            kind, flags, stream, payload = f
            if kind == WINDOW_UPDATE:
                increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if stream == 0:
                    conn_window += increment
                elif stream in windows:
                    windows[stream] += increment
            elif kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM):
                done.add(stream)
        ended += len(done)
        socks.append(s)
    print(f"sent {sent} ended {ended}", flush=True)
    time.sleep(hold_seconds)

mode, path = sys.argv[1], sys.argv[2]
if mode == "amplify":
    amplify(path, amplifying_block(int(sys.argv[3]), int(sys.argv[4])))
elif mode == "amplify-huffman":
    amplify(path, huffman_block(int(sys.argv[3])))
elif mode == "amplify-after-request":
    amplify(path, amplifying_block(int(sys.argv[3]), int(sys.argv[4])), after_request=True)
elif mode == "hold":
    hold(path, int(sys.argv[3]), float(sys.argv[4]))
elif mode == "bodies":
    bodies(path, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
elif mode == "first-flight":
    first_flight(path)
elif mode == "streams":
    streams(path, int(sys.argv[3]), share=sys.argv[4:] == ["shared"])
