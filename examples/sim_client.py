"""Talk to a Photonica device (or the simulator) with nothing but a socket.

    awen sim serve --tcp 127.0.0.1:5025 --seed 1        # in one terminal
    python examples/sim_client.py 127.0.0.1:5025

It sends a few SCPI commands, as any instrument client would: identity, a
heater setting and its read-back, a setting the device refuses, then two
photons into modes 0 and 1 of the uncalibrated mesh (every heater at 0 V, so
the mesh is whatever fabrication made it), and the counts per detector.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5025").rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=10) as sock:
        replies = sock.makefile("rb")

        def ask(line: str) -> str:
            sock.sendall(line.encode() + b"\n")
            return replies.readline().decode().rstrip("\n")

        print("identity:", ask("*IDN?"))
        print("heater 3 at 2.5 V:", ask("HEAT:VOLT 3,2.5;HEAT:VOLT? 3;SYST:ERR?"))
        print("heater 3 at 9 V:  ", ask("HEAT:VOLT 3,9;SYST:ERR?"))
        print("run:", ask("*RST;INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT 10000;SYST:ERR?"))
        print("counts per detector:", ask("FETC:COUN?"))
        print("status:", ask("STAT:TEMP?;SYST:INT?;HEAT:POW?"))


if __name__ == "__main__":
    main()
