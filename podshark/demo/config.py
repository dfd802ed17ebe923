"""The run configuration the demo writes once and every service process reads: ``<workdir>/config.json``.

One file instead of a long command line per service: the topology (so each service finds its own
address and its peers'), the load generator's rate, the api's random error rate and which DNS
server to run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from podshark.demo.topology import Topology

CONFIG_FILE = "config.json"
DNS_BACKENDS = ("auto", "dnsmasq", "python")
MAX_RATE = 200.0  # requests/s: more is a load test, not a demo, on the 2-core machines it runs on


def check_settings(rate: float, error_rate: float, dns_backend: str) -> None:
    """ValueError naming the setting that is out of range."""
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise ValueError(f"demo rate must be > 0 and <= {MAX_RATE:g} requests/s, got {rate}")
    if not (math.isfinite(error_rate) and 0 <= error_rate <= 1):
        raise ValueError(f"demo error rate must be between 0 and 1, got {error_rate}")
    if dns_backend not in DNS_BACKENDS:
        raise ValueError(f"demo DNS server must be one of {', '.join(DNS_BACKENDS)}, got {dns_backend!r}")


@dataclass(frozen=True, slots=True)
class DemoConfig:
    topology: Topology
    rate: float = 5.0  # loadgen requests per second to the frontend
    error_rate: float = 0.02  # share of api product lookups that fail with a 500 at random
    dns_backend: str = "auto"  # auto: dnsmasq when installed, else the built-in Python server

    def validate(self) -> None:
        check_settings(self.rate, self.error_rate, self.dns_backend)

    def write(self, workdir: Path) -> Path:
        path = workdir / CONFIG_FILE
        body = {
            "topology": json.loads(self.topology.to_json()),
            "rate": self.rate,
            "error_rate": self.error_rate,
            "dns_backend": self.dns_backend,
        }
        path.write_text(json.dumps(body, indent=1))
        return path

    @classmethod
    def read(cls, workdir: Path) -> DemoConfig:
        """ValueError (naming the file) when it is missing or not a valid configuration."""
        path = workdir / CONFIG_FILE
        try:
            d = json.loads(path.read_text())
            cfg = cls(
                topology=Topology.from_json(json.dumps(d["topology"])),
                rate=float(d["rate"]),
                error_rate=float(d["error_rate"]),
                dns_backend=str(d["dns_backend"]),
            )
            cfg.validate()
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a usable demo configuration: {e}") from e
        return cfg
