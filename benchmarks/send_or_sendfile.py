"""How fast one cached file goes to a local client: os.sendfile or pread + send.

Why this exists: daomirror serves cached blobs on plain TCP by reading them
into one reused buffer and sending that (daomirror/streaming.py), not with
sendfile, because on the machine it is measured on the copy through a
cache-hot buffer was the faster of the two and took less CPU. Run this to
check that on another machine.

A thread serves a file (512 MiB of random bytes, in the page cache) once
per trial as a bare HTTP response; curl reads it to /dev/null. For each
method and chunk size it prints MB/s (10**6 bytes/s) and the CPU seconds
this process spent serving.
"""

import argparse
import os
import socket
import subprocess
import tempfile
import threading
import time

MIB = 1 << 20
METHODS = [("sendfile", 8 * MIB), ("sendfile", 2 * MIB), ("sendfile", 256 << 10), ("sendfile", 64 << 10),
           ("send", 256 << 10), ("send", 512 << 10), ("send", 1 * MIB)]


def serve_once(listener, path, method, chunk):
    client, _ = listener.accept()
    with client, open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        client.recv(65536)
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        position = 0
        if method == "sendfile":
            while position < size:
                position += os.sendfile(client.fileno(), file.fileno(), position, min(chunk, size - position))
        else:
            buffer = memoryview(bytearray(chunk))
            while position < size:
                got = os.preadv(file.fileno(), [buffer], position)
                client.sendall(buffer[:got])
                position += got


def trial(path, method, chunk):
    """Serve the file once; return (MB/s, server CPU seconds)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=serve_once, args=(listener, path, method, chunk))
        server.start()
        cpu, start = time.process_time(), time.perf_counter()
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
                              f"http://127.0.0.1:{listener.getsockname()[1]}/"],
                             capture_output=True, text=True, check=True).stdout
        elapsed = time.perf_counter() - start
        server.join()
        return int(out) / elapsed / 1e6, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, metavar="MiB", help="file size (default 512)")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile(prefix="send-or-sendfile-") as file:
        for _ in range(args.size):
            file.write(os.urandom(MIB))
        file.flush()
        for trial_number in range(args.trials):
            for method, chunk in METHODS:
                mbps, cpu = trial(file.name, method, chunk)
                print(f"{method:9} {chunk >> 10:5} KiB  {mbps:6.0f} MB/s  server CPU {cpu:.2f} s", flush=True)
            print()


if __name__ == "__main__":
    main()
