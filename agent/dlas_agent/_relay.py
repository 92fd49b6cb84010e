"""Pipe <-> socket relay behind an authenticated agent session (see ``auth.connect``).

Run by TVM's ``rpc.CreatePipeClient`` as ``python -I -S _relay.py SOCKFD READFD WRITEFD``: SOCKFD is the TCP
connection to the agent, already authenticated and past TVM's key exchange; READFD/WRITEFD are the pipes of
TVM's RPC client. Stdlib only; exits as soon as either side closes.
"""

import os
import socket
import sys
import threading


def main() -> None:
    sock_fd, read_fd, write_fd = (int(a) for a in sys.argv[1:4])
    sock = socket.socket(fileno=sock_fd)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def to_agent() -> None:
        try:
            while True:
                data = os.read(read_fd, 1 << 20)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=to_agent, daemon=True).start()
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
    except OSError:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
